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
``--kd-topk`` larger than the store's K is an error (at the first batch: the
task loads the store after the criterion is built). With
``--ignore-prefix-size N`` the first N target positions are left out of both
terms.

Logged, unweighted: ``kd_loss`` and ``teacher_nll`` (online teacher) per
token in base 2; ``teacher_agree``, the percent of KD positions where the
student's top-1 word is the teacher's; ``teacher_accuracy``, the percent where
the teacher's top-1 word (the first stored id of a store, the argmax of an
online teacher's q) is the gold word, beside fairseq's student ``accuracy``
on the same positions with ``--report-accuracy``.

``reduce=False`` returns per-token losses as ``label_smoothed_cross_entropy``
does (see ``_common``): (B*T) x 1, 0 at pads, summing to the reduced loss.

Divergence choice (``--kd-divergence``, ``losses.kd_divergence``): ``forward_kl``
(the default) is the cross-entropy above and keeps the fused path; ``reverse_kl``,
``jsd`` (``--kd-beta``, Agarwal et al. 2024), ``skew_forward_kl`` /
``skew_reverse_kl`` (``--kd-skew``, Ko et al. 2024) and ``tvd`` replace
H(q_t, p_t) in KD and take the unfused path. ``--kd-t2-scaling`` multiplies
whichever divergence. Against a top-K teacher (a store or ``--kd-topk``) each is
taken over the K words plus one tail bucket (``losses`` module docstring); the
reverse KL is infinite there and is refused when the criterion is built.

Selective distillation (Wang et al. 2021, ``--kd-selection``): KD is summed only
over the selected positions, the gold term over all of them. The selection
score is the student's cross-entropy of the gold word at temperature 1
(detached). ``batch`` takes the ceil(r * N) highest of the batch's N positions;
``global`` pushes the batch's scores into a FIFO queue of the last
``--kd-selection-queue`` words' scores, then keeps the positions whose score
is at least the queue's ceil(r * Q)-th largest (its 1 - r quantile). The queue
is the criterion's state: not a parameter, not saved in checkpoints (a resumed
run starts with an empty queue), one per rank under DDP (each rank's
threshold comes from its own batches), filled from training batches only
(validation thresholds against it and its own batch without storing them).
Selection takes the unfused path. ``kd_loss``, ``teacher_agree`` and
``teacher_accuracy`` are still over every KD position (what the divergence
is); ``kd_selected_fraction`` is the fraction of them that carried the KD
term.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterionConfig
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from .. import losses
from ._common import (
    KDDivergenceConfig,
    LabelSmoothedBaseCriterion,
    check_divergence,
    check_weight,
    log_per_count_base2,
    sum_logs,
    summed_data,
)

SELECTIONS = ("none", "batch", "global")


@dataclass
class WordKDCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig, KDDivergenceConfig):
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
            "vocabulary (a soft-label store always gives its own K: a smaller K uses its first K, "
            "a larger one is an error)"
        },
    )
    kd_t2_scaling: bool = field(
        default=False,
        metadata={"help": "multiply the KD term by T^2 (Hinton et al. 2015); off as in Chen et al. 2020"},
    )
    kd_selection: ChoiceEnum(SELECTIONS) = field(
        default="none",
        metadata={
            "help": "selective distillation (Wang et al. 2021): KD only on the words of highest student "
            "cross-entropy, the top --kd-selection-ratio of the batch (batch) or above the queue's "
            "1 - ratio quantile (global); none = every word"
        },
    )
    kd_selection_ratio: float = field(
        default=0.5, metadata={"help": "the fraction r in (0, 1] of words that get the KD term"}
    )
    kd_selection_queue: int = field(
        default=30000,
        metadata={"help": "--kd-selection global: the number of recent words whose cross-entropies set the "
                  "threshold (per rank; not saved in checkpoints)"},
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
        kd_divergence="forward_kl",
        kd_beta=0.5,
        kd_skew=0.1,
        kd_selection="none",
        kd_selection_ratio=0.5,
        kd_selection_queue=30000,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        check_weight("--kd-alpha", kd_alpha)
        if kd_temperature <= 0 or kd_student_temperature <= 0:
            raise ValueError("--kd-temperature and --kd-student-temperature must be > 0")
        if not hasattr(task, "teacher_soft_targets"):
            raise ValueError("--criterion word_kd needs --task translation_kd (it provides the teacher)")
        store = getattr(getattr(task, "cfg", None), "soft_labels", None)
        check_divergence(kd_divergence, kd_beta, kd_skew, topk_teacher=kd_topk > 0 or bool(store))
        if str(kd_selection) not in SELECTIONS:
            raise ValueError(f"--kd-selection {kd_selection} is unknown: use one of {', '.join(SELECTIONS)}")
        if not 0.0 < kd_selection_ratio <= 1.0:
            raise ValueError(f"--kd-selection-ratio must be in (0, 1], got {kd_selection_ratio}")
        if kd_selection_queue < 1:
            raise ValueError(f"--kd-selection-queue must be >= 1, got {kd_selection_queue}")
        self.kd_divergence = str(kd_divergence)
        self.kd_beta = kd_beta
        self.kd_skew = kd_skew
        self.kd_selection = str(kd_selection)
        self.kd_selection_ratio = kd_selection_ratio
        self.kd_selection_queue = kd_selection_queue
        self.selection_queue = None  # global selection: recent words' cross-entropies (not state_dict)
        self.kd_alpha = kd_alpha
        self.kd_temperature = kd_temperature
        self.kd_student_temperature = kd_student_temperature
        self.kd_topk = kd_topk
        self.kd_t2_scaling = kd_t2_scaling

    def forward(self, model, sample, reduce=True):
        self.check_store_topk(sample)
        net_output = model(**sample["net_input"])
        if reduce and self.fused_kd(model, sample):
            return self.forward_fused(model, net_output, sample)
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size, logging_output = self.gold_logging_output(loss, nll_loss, sample)
        kd = self.compute_kd(model, net_output, sample, reduce=reduce)
        if kd is not None:
            kd_loss, kd_logs = kd
            loss = losses.interpolate(loss, kd_loss, self.kd_alpha)
            logging_output["loss"] = summed_data(loss)
            logging_output.update(kd_logs)
        self.log_accuracy(model, net_output, sample, logging_output)
        return loss, sample_size, logging_output

    def check_store_topk(self, sample) -> None:
        """Raise when ``--kd-topk`` asks for more words than the soft-label store holds
        (a size lookup per batch; the store is loaded by the task after this criterion)."""
        soft_labels = sample.get("soft_labels") if sample else None
        if soft_labels is None:
            return
        K = soft_labels["ids"].size(-1)
        if self.kd_topk > K:
            raise ValueError(
                f"--kd-topk {self.kd_topk} is larger than K = {K}, the words per token of the soft-label "
                f"store (--soft-labels): use --kd-topk {K} or less (0 = all {K}), or dump a store with "
                f"fairseq-kd-dump-soft-labels --topk {self.kd_topk}"
            )

    def fused_kd(self, model, sample) -> bool:
        """Whether this batch takes the fused path (``losses.gold_and_kd_cross_entropy``):
        a teacher and alpha > 0, the forward KL without selection, the student's
        temperature 1, no ignored prefix, and logits the student normalizes with a
        plain softmax (no adaptive softmax)."""
        return (
            self.kd_alpha > 0
            and self.kd_divergence == "forward_kl"
            and self.kd_selection == "none"
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
        teacher_correct = losses.teacher_argmax(probs_T, ids_T).eq(target) & weight  # pad rows: weight 0
        logging_output.update(
            kd_loss=(kd_loss * kd_scale).data, kd_tokens=int(weight.sum()), teacher_agree=int(agree.sum()),
            teacher_correct=int(teacher_correct.sum()),
        )
        if teacher_nll is not None:
            logging_output["teacher_nll"] = teacher_nll.data
        self.log_accuracy(model, net_output, sample, logging_output)
        return loss, sample_size, logging_output

    def compute_kd(self, model, net_output, sample, reduce=True):
        """KD term and its unweighted logs, or None without a teacher (the unfused path:
        any student temperature, ignored prefixes, adaptive softmax, ``reduce=False``).

        The term is summed, or with ``reduce=False`` a (B*T') x 1 column laid out as
        ``compute_loss``'s (T' = T minus the ignored prefix), 0 at pads.
        """
        target = sample["target"]
        mask = target.ne(self.padding_idx)  # B x T, EOS included
        prefix = self.ignore_prefix_size
        if prefix > 0:
            mask[:, :prefix] = False  # positions the gold term ignores
        teacher = self.task.teacher_soft_targets(
            sample, model, mask, temperature=self.kd_temperature, topk=self.kd_topk
        )
        if teacher is None:
            return None
        probs_T, ids_T, teacher_nll = teacher
        logits_S = net_output[0][mask].float()  # N x V
        lprobs_S = F.log_softmax(logits_S / self.kd_student_temperature, dim=-1)
        kd = losses.kd_divergence(lprobs_S, probs_T, ids_T, self.kd_divergence, self.kd_beta, self.kd_skew)  # N
        kd_scale = self.kd_temperature**2 if self.kd_t2_scaling else 1.0
        agree = losses.argmax_agreement(lprobs_S.detach(), probs_T, ids_T)
        gold = target[mask]
        teacher_correct = losses.teacher_argmax(probs_T, ids_T).eq(gold)
        logs = {
            "kd_loss": kd.detach().sum() * kd_scale,  # every KD position, selected or not
            "kd_tokens": int(mask.sum()),
            "teacher_agree": int(agree.sum()),
            "teacher_correct": int(teacher_correct.sum()),
        }
        if teacher_nll is not None:
            logs["teacher_nll"] = teacher_nll.data
        if self.kd_selection != "none":
            selected = self.select(logits_S, lprobs_S, gold, training=model.training)
            kd = kd * selected
            logs["kd_selected"] = int(selected.sum())
        kd_loss = kd.sum() * kd_scale
        if not reduce:  # per position, in the gold term's (B*T') x 1 layout
            kd_loss = kd.new_zeros(mask.shape).masked_scatter(mask, kd * kd_scale)[:, prefix:].reshape(-1, 1)
        return kd_loss, logs

    def select(self, logits_S, lprobs_S, gold, training=True):
        """N booleans, the positions that get the KD term (``--kd-selection``; Wang et al. 2021).

        The score is the student's cross-entropy of the gold word at temperature 1,
        detached. ``global`` pushes the scores into the queue only while training.
        """
        with torch.no_grad():
            if self.kd_student_temperature != 1:
                lprobs_S = F.log_softmax(logits_S, dim=-1)
            ce_S = -lprobs_S.gather(-1, gold.unsqueeze(-1)).squeeze(-1)  # N
            if self.kd_selection == "batch":
                return losses.select_batch(ce_S, self.kd_selection_ratio)
            queue = losses.fifo_push(self.selection_queue, ce_S, self.kd_selection_queue)
            if training:
                self.selection_queue = queue
            return losses.select_global(ce_S, queue, self.kd_selection_ratio)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        reduce_kd_metrics(logging_outputs)


def reduce_kd_metrics(logging_outputs) -> None:
    """Log kd_loss and teacher_nll per token in base 2, teacher_agree and
    teacher_accuracy in percent of the KD positions (fairseq's ``accuracy`` is
    the student's, with ``--report-accuracy``), and with ``--kd-selection``
    ``kd_selected_fraction``, the fraction of KD positions that carried the term."""
    kd_tokens = log_per_count_base2(logging_outputs, ["kd_loss"], "kd_tokens")
    if kd_tokens == 0:
        return
    if any("kd_selected" in log for log in logging_outputs):
        selected = sum_logs(logging_outputs, "kd_selected")
        metrics.log_scalar("kd_selected_fraction", selected / kd_tokens, kd_tokens, round=4)
    agree = sum_logs(logging_outputs, "teacher_agree")
    metrics.log_scalar("teacher_agree", 100.0 * agree / kd_tokens, kd_tokens, round=2)
    # weighted by the positions, so that the mean over a log interval is correct / total, as accuracy
    correct = sum_logs(logging_outputs, "teacher_correct")
    metrics.log_scalar("teacher_accuracy", 100.0 * correct / kd_tokens, kd_tokens, round=3)
    if any("teacher_nll" in log for log in logging_outputs):
        log_per_count_base2(logging_outputs, ["teacher_nll"], "kd_tokens")
