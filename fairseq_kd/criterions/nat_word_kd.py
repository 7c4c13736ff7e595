"""``--criterion nat_word_kd``: fairseq's ``nat_loss`` plus word-level KD from an AR teacher.

Word-level knowledge distillation (Kim & Rush 2016, Sequence-Level Knowledge
Distillation, eq. 4; Hinton et al. 2015 for the temperature) applied to the
word-insertion term of a non-autoregressive student: Mask-Predict / CMLM
(Ghazvininejad et al. 2019) or the Levenshtein Transformer (Gu et al. 2019).

    loss    = sum_k f_k L_k  with L_word_ins replaced by (1 - alpha) L_word_ins + alpha KD
    KD      = mean over the KD positions i of  - sum_v q_i(v) log p_i(v)
    q_i     = softmax(z_T,i / T)   teacher, teacher-forced on the gold target
                                   (ensembles average q; --kd-topk renormalizes over K)
    p_i     = softmax(z_S,i)       student's word_ins output at position i

where L_k are the terms of fairseq's ``nat_loss`` with their factors f_k
(CMLM: ``word_ins``, ``length``; LevT: ``mask_ins``, ``word_ins``,
``word_del``), each a mean over its own positions, label-smoothed as in
``nat_loss``. With alpha = 0 the loss is exactly ``nat_loss``'s.

Which positions, and why. KD needs the student's prediction and the teacher's
distribution for the same target word. Both models' ``word_ins`` output is in
the target frame: ``out`` is B x T x V over ``sample["target"]``
(``<s> w_1 .. w_n </s>``) and its ``mask`` marks the words the student must
predict there.

- CMLM: ``prev_output_tokens`` is the target with random words replaced by
  ``<unk>`` (``--noise random_mask``), the decoder runs on it position by
  position, and ``mask = prev_output_tokens == <unk>``: position j predicts
  target word j.
- LevT: ``word_ins`` runs on ``masked_tgt_tokens``, the gold target with the
  words missing from the noised input (``--noise random_delete``) replaced by
  ``<unk>``, and ``mask = masked_tgt_masks``: again position j predicts target
  word j. (The placeholder and deletion terms live in other frames, the
  noised input and the student's own predictions, and have no teacher word
  distribution; they keep their ``nat_loss`` form.)

So KD applies at exactly the positions of the word_ins loss, minus column 0
(``<s>``, which neither model predicts and the teacher never sees as a
target). The teacher's distribution for target word j is its output at
step j - 1 when it is fed ``</s> w_1 .. w_{j-1}`` (the task builds that input;
see ``tasks/translation_lev_kd.py``). The teacher is thus conditioned on the
gold prefix, not on the student's noised input: it supplies what an AR model
would predict for that word given the whole gold left context, which is the
word-level KD target of Kim & Rush. A student whose output frame is not the
target frame (``out`` of another length) is refused.

Normalization follows ``nat_loss`` (mean over the term's positions,
``sample_size = 1``). Each term is logged unweighted: ``word_ins-loss`` (the
gold term before interpolation), ``length-loss``, ..., ``kd-loss``; fairseq
prints them as ``word_ins``, ``length``, ..., ``kd`` (base 2). At alpha = 0
the teacher is not run at all and ``kd-loss`` is not logged: the loss and the
logs are ``nat_loss``'s.

``--kd-divergence`` (``losses.kd_divergence``, as in ``word_kd``) replaces
H(q_i, p_i) by the reverse KL, the generalized JSD (``--kd-beta``), a skew KL
(``--kd-skew``) or the total variation; the default ``forward_kl`` is the
cross-entropy above. Against a top-K teacher (``--kd-topk``) the divergences are
taken over the K words plus one tail bucket (``losses`` module docstring); the
reverse KL is refused there. (Selective distillation, ``--kd-selection``, is
``word_kd``'s only.)
"""
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.nat_loss import (
    LabelSmoothedDualImitationCriterion,
    LabelSmoothedDualImitationCriterionConfig,
)

from .. import losses
from ._common import KDDivergenceConfig, check_divergence, check_weight


@dataclass
class NatWordKDCriterionConfig(LabelSmoothedDualImitationCriterionConfig, KDDivergenceConfig):
    kd_alpha: float = field(
        default=0.5,
        metadata={"help": "weight of the KD term in the word_ins term: (1-alpha)*word_ins + alpha*KD"},
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "temperature T applied to the teacher's logits"}
    )
    kd_topk: int = field(
        default=0,
        metadata={"help": "keep the teacher's top-K words and renormalize over them; 0 = full vocabulary"},
    )


@register_criterion("nat_word_kd", dataclass=NatWordKDCriterionConfig)
class NatWordKDCriterion(LabelSmoothedDualImitationCriterion):
    def __init__(
        self, task, label_smoothing, kd_alpha=0.5, kd_temperature=1.0, kd_topk=0,
        kd_divergence="forward_kl", kd_beta=0.5, kd_skew=0.1,
    ):
        super().__init__(task, label_smoothing)
        check_weight("--kd-alpha", kd_alpha)
        if kd_temperature <= 0:
            raise ValueError(f"--kd-temperature must be > 0, got {kd_temperature}")
        check_divergence(kd_divergence, kd_beta, kd_skew, topk_teacher=kd_topk > 0)
        if not hasattr(task, "teacher_soft_targets") or not hasattr(task, "inject_noise"):
            raise ValueError("--criterion nat_word_kd needs --task translation_lev_kd (it owns the teacher)")
        if getattr(task, "teacher", None) is None:
            raise ValueError("--criterion nat_word_kd needs --teacher-path (an autoregressive teacher)")
        self.kd_alpha = kd_alpha
        self.kd_temperature = kd_temperature
        self.kd_topk = kd_topk
        self.kd_divergence = str(kd_divergence)
        self.kd_beta = kd_beta
        self.kd_skew = kd_skew

    def forward(self, model, sample, reduce=True):
        src_tokens = sample["net_input"]["src_tokens"]
        src_lengths = sample["net_input"]["src_lengths"]
        outputs = model(src_tokens, src_lengths, sample["prev_target"], sample["target"])
        if "word_ins" not in outputs:
            raise ValueError("nat_word_kd distills into a 'word_ins' term; this model has none")

        terms, nll_losses = [], []
        for name, out in outputs.items():  # exactly nat_loss's terms
            if out.get("loss", None) is None:
                term = self._compute_loss(
                    out.get("out"), out.get("tgt"), out.get("mask", None), out.get("ls", 0.0),
                    name=name + "-loss", factor=out.get("factor", 1.0),
                )
            else:
                term = self._custom_loss(out.get("loss"), name=name + "-loss", factor=out.get("factor", 1.0))
            terms.append((name, term))
            if out.get("nll_loss", False):
                nll_losses.append(term.get("nll_loss", 0.0))

        # alpha = 0: no teacher forward, and the word_ins term is nat_loss's exactly
        kd_loss = self.compute_kd(model, outputs["word_ins"], sample) if self.kd_alpha > 0 else None
        loss = 0.0
        for name, term in terms:
            if name == "word_ins" and kd_loss is not None:
                word_ins = losses.interpolate(term["loss"] / term["factor"], kd_loss, self.kd_alpha)
                loss = loss + word_ins * term["factor"]
            else:
                loss = loss + term["loss"]
        nll_loss = sum(nll_losses) if nll_losses else loss.new_tensor(0)

        sample_size = 1  # nat_loss: every term is already a mean
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
        }
        for _, term in terms:
            logging_output[term["name"]] = utils.item(term["loss"].data / term["factor"])
        if kd_loss is not None:
            logging_output["kd-loss"] = utils.item(kd_loss.data)
        return loss, sample_size, logging_output

    def kd_positions(self, word_ins, target):
        """B x T booleans: the word_ins positions minus <s> (column 0)."""
        out = word_ins["out"]
        if out.shape[:2] != target.shape:
            raise ValueError(
                f"word_ins output is {tuple(out.shape[:2])}, the target {tuple(target.shape)}: "
                "nat_word_kd needs a student whose output frame is the target's (CMLM, LevT)"
            )
        mask = word_ins.get("mask", None)
        mask = target.ne(self.task.target_dictionary.pad()) if mask is None else mask.clone()
        mask[:, 0] = False
        return mask

    def compute_kd(self, model, word_ins, sample):
        """KD = mean over the KD positions of H(q_T, p_S) (or ``--kd-divergence``); 0 when there is none."""
        mask = self.kd_positions(word_ins, sample["target"])
        if not mask.any():
            return word_ins["out"].new_zeros(()).float()
        teacher = self.task.teacher_soft_targets(
            sample, model, mask, temperature=self.kd_temperature, topk=self.kd_topk
        )
        probs_T, ids_T, _ = teacher
        lprobs_S = F.log_softmax(word_ins["out"][mask].float(), dim=-1)  # N x V
        return losses.kd_divergence(lprobs_S, probs_T, ids_T, self.kd_divergence, self.kd_beta, self.kd_skew).mean()
