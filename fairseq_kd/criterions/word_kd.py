"""``--criterion word_kd``: word-level knowledge distillation.

Kim & Rush (2016), Sequence-Level Knowledge Distillation (word-level KD);
Hinton et al. (2015) for temperatures; Chen et al. (2020) for top-K soft labels.

    loss = (1 - alpha) * LS-NLL(gold) + alpha * KD
    KD   = sum over non-pad target positions t (EOS included) of
           - sum_v q_t(v) log p_t(v)      [times T^2 with --kd-t2-scaling]
    q_t  = softmax(z_T / T)   (teacher; ensembles average q; top-K renormalized)
    p_t  = softmax(z_S / T_S) (student, full vocabulary)

Normalization follows fairseq's autoregressive criterions: both terms are sums
over target tokens and ``sample_size = ntokens``. With alpha = 0 the loss is
exactly ``label_smoothed_cross_entropy``'s.

When the student's temperature is 1 (the default) the two terms are computed
together by ``losses.gold_and_kd_cross_entropy``: one softmax of the student's
logits, the gradient written into it, no log-probability or q * log p tensors
(BENCHMARKS.md 1); other settings take the plain two-term path.

The teacher comes from the task (``--task translation_kd``): an online teacher
(``--teacher-path``) or a soft-label store (``--soft-labels``). A batch with
no teacher (validation with a store) is scored on the gold loss alone.
"""
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterionConfig
from fairseq.logging import metrics

from .. import losses
from ._common import LabelSmoothedBaseCriterion, check_weight, log_per_count_base2, sum_logs


@dataclass
class WordKDCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    kd_alpha: float = field(
        default=0.5,
        metadata={"help": "weight of the KD term: (1-alpha)*NLL + alpha*KD; 0 = no KD, 1 = pure KD"},
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "temperature T applied to the teacher's logits"}
    )
    kd_student_temperature: float = field(
        default=1.0, metadata={"help": "temperature applied to the student's logits in the KD term"}
    )
    kd_topk: int = field(
        default=0,
        metadata={
            "help": "keep the teacher's top-K words and renormalize over them; 0 = full "
            "vocabulary (a soft-label store always gives top-K; a smaller K uses its first K)"
        },
    )
    kd_t2_scaling: bool = field(
        default=False,
        metadata={"help": "multiply the KD term by T^2 (Hinton et al. 2015); off as in Chen et al. 2020"},
    )


@register_criterion("word_kd", dataclass=WordKDCriterionConfig)
class WordKDCriterion(LabelSmoothedBaseCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        kd_alpha=0.5,
        kd_temperature=1.0,
        kd_student_temperature=1.0,
        kd_topk=0,
        kd_t2_scaling=False,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        check_weight("--kd-alpha", kd_alpha)
        if kd_temperature <= 0 or kd_student_temperature <= 0:
            raise ValueError("--kd-temperature and --kd-student-temperature must be > 0")
        if not hasattr(task, "teacher_soft_targets"):
            raise ValueError("--criterion word_kd needs --task translation_kd (it provides the teacher)")
        self.kd_alpha = kd_alpha
        self.kd_temperature = kd_temperature
        self.kd_student_temperature = kd_student_temperature
        self.kd_topk = kd_topk
        self.kd_t2_scaling = kd_t2_scaling

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        if reduce and self.fused_kd(model, sample):
            return self.forward_fused(model, net_output, sample)
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size, logging_output = self.gold_logging_output(loss, nll_loss, sample)
        kd = self.compute_kd(model, net_output, sample)
        if kd is not None:
            kd_loss, kd_logs = kd
            loss = losses.interpolate(loss, kd_loss, self.kd_alpha)
            logging_output["loss"] = loss.data
            logging_output.update(kd_logs)
        self.log_accuracy(model, net_output, sample, logging_output)
        return loss, sample_size, logging_output

    def fused_kd(self, model, sample) -> bool:
        """Whether this batch takes the fused path (``losses.gold_and_kd_cross_entropy``):
        a teacher and alpha > 0, the student's temperature 1, no ignored prefix, and
        logits the student normalizes with a plain softmax (no adaptive softmax)."""
        return (
            self.kd_alpha > 0
            and self.kd_student_temperature == 1
            and self.ignore_prefix_size == 0
            and getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is None
            and self.task.has_teacher(sample)
        )

    def forward_fused(self, model, net_output, sample):
        """The same loss and logs as the unfused path, in one pass over the student's
        logits: no log-probabilities, no q * log p product, no extra gradient buffers."""
        target = sample["target"].reshape(-1)
        weight = target.ne(self.padding_idx)  # EOS included
        probs_T, ids_T, teacher_nll = self.task.teacher_soft_targets(
            sample, model, None, temperature=self.kd_temperature, topk=self.kd_topk
        )
        logits_S = net_output[0]
        kd_scale = self.kd_temperature**2 if self.kd_t2_scaling else 1.0
        loss, nll_loss, kd_loss, agree = losses.gold_and_kd_cross_entropy(
            logits_S.view(-1, logits_S.size(-1)).float(), target, probs_T, ids_T, weight,
            self.kd_alpha, self.eps, kd_scale,
        )
        sample_size, logging_output = self.gold_logging_output(loss, nll_loss, sample)
        logging_output.update(
            kd_loss=(kd_loss * kd_scale).data, kd_tokens=int(weight.sum()), teacher_agree=int(agree.sum())
        )
        if teacher_nll is not None:
            logging_output["teacher_nll"] = teacher_nll.data
        self.log_accuracy(model, net_output, sample, logging_output)
        return loss, sample_size, logging_output

    def compute_kd(self, model, net_output, sample):
        """Summed KD term and its unweighted logs, or None without a teacher (the
        unfused path: any student temperature, ignored prefixes, adaptive softmax)."""
        target = sample["target"]
        mask = target.ne(self.padding_idx)  # B x T, EOS included
        teacher = self.task.teacher_soft_targets(
            sample, model, mask, temperature=self.kd_temperature, topk=self.kd_topk
        )
        if teacher is None:
            return None
        probs_T, ids_T, teacher_nll = teacher
        logits_S = net_output[0][mask].float()  # N x V
        lprobs_S = F.log_softmax(logits_S / self.kd_student_temperature, dim=-1)
        kd = losses.kd_cross_entropy(lprobs_S, probs_T, ids_T)
        agree = losses.argmax_agreement(lprobs_S.detach(), probs_T, ids_T)
        kd_loss = kd.sum()
        if self.kd_t2_scaling:
            kd_loss = kd_loss * self.kd_temperature**2
        logs = {
            "kd_loss": kd_loss.data,
            "kd_tokens": int(mask.sum()),
            "teacher_agree": int(agree.sum()),
        }
        if teacher_nll is not None:
            logs["teacher_nll"] = teacher_nll.data
        return kd_loss, logs

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        reduce_kd_metrics(logging_outputs)


def reduce_kd_metrics(logging_outputs) -> None:
    """Log kd_loss and teacher_nll per token in base 2, teacher_agree in percent."""
    kd_tokens = log_per_count_base2(logging_outputs, ["kd_loss"], "kd_tokens")
    if kd_tokens == 0:
        return
    agree = sum_logs(logging_outputs, "teacher_agree")
    metrics.log_scalar("teacher_agree", 100.0 * agree / kd_tokens, kd_tokens, round=2)
    if any("teacher_nll" in log for log in logging_outputs):
        log_per_count_base2(logging_outputs, ["teacher_nll"], "kd_tokens")
