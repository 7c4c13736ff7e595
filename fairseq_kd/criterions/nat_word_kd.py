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

How. The loss is ``nat_loss``'s own ``forward``, run on the model's output
dictionary with one more entry: the criterion wraps the model so that its
outputs carry ``kd``, a precomputed term (``"loss"``) with its factor
alpha * f_word_ins, while ``word_ins`` keeps its ``out`` / ``tgt`` / ``mask`` and
gets the factor (1 - alpha) * f_word_ins. ``nat_loss`` sums the terms, logs each
unweighted and reduces the metrics as for any model; nothing of its loop is
copied here.

Normalization follows ``nat_loss`` (mean over the term's positions,
``sample_size = 1``). Each term is logged unweighted: ``word_ins-loss`` (the
gold term before interpolation), ``length-loss``, ..., ``kd-loss``; fairseq
prints them as ``word_ins``, ``length``, ..., ``kd`` (base 2). At alpha = 0
the teacher is not run at all and ``kd-loss`` is not logged: the loss and the
logs are ``nat_loss``'s. At alpha = 1 the gold word_ins term has factor 0, so
``nat_loss`` cannot log it unweighted (0 / 0): it is logged from a second,
gradient-free ``nat_loss`` pass over the word_ins entry alone.

``--kd-divergence`` (``losses.kd_divergence``, as in ``word_kd``) replaces
H(q_i, p_i) by the reverse KL, the generalized JSD (``--kd-beta``), a skew KL
(``--kd-skew``) or the total variation; the default ``forward_kl`` is the
cross-entropy above. Against a top-K teacher (``--kd-topk``) the divergences are
taken over the K words plus one tail bucket (``losses`` module docstring); the
reverse KL is refused there. (Selective distillation, ``--kd-selection``, and
on-policy distillation, ``--kd-on-policy-ratio``, are ``word_kd``'s only.)
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.nat_loss import (
    LabelSmoothedDualImitationCriterion,
    LabelSmoothedDualImitationCriterionConfig,
)
from fairseq.tasks.translation_lev import TranslationLevenshteinTask

from .. import losses
from ..errors import UsageError
from ..tasks._kd_teacher import require_teacher_task
from ._common import KDConfig, KDDivergenceConfig, check_divergence, check_weight


@dataclass
class NatWordKDCriterionConfig(LabelSmoothedDualImitationCriterionConfig, KDConfig, KDDivergenceConfig):
    pass


@register_criterion("nat_word_kd", dataclass=NatWordKDCriterionConfig)
class NatWordKDCriterion(LabelSmoothedDualImitationCriterion):
    def __init__(
        self, task, label_smoothing, kd_alpha=0.5, kd_temperature=1.0, kd_topk=0,
        kd_divergence="forward_kl", kd_beta=0.5, kd_skew=0.1,
    ):
        super().__init__(task, label_smoothing)
        check_weight("--kd-alpha", kd_alpha)
        if kd_temperature <= 0:
            raise UsageError(f"--kd-temperature must be > 0, got {kd_temperature}")
        check_divergence(kd_divergence, kd_beta, kd_skew, topk_teacher=kd_topk > 0)
        # a NAT task (its batches carry the noised sample["prev_target"]) with a teacher
        require_teacher_task(task, "nat_word_kd", "--task translation_lev_kd", base=TranslationLevenshteinTask)
        if task.teacher is None:
            raise UsageError("--criterion nat_word_kd needs --teacher-path (an autoregressive teacher)")
        self.kd_alpha = kd_alpha
        self.kd_temperature = kd_temperature
        self.kd_topk = kd_topk
        self.kd_divergence = str(kd_divergence)
        self.kd_beta = kd_beta
        self.kd_skew = kd_skew

    def forward(self, model, sample, reduce=True):
        """``nat_loss``'s forward on the model's outputs plus the ``kd`` entry (module docstring).

        ``reduce`` is ignored: the loss and the logs are always reduced (``nat_loss`` has
        no per-token losses; its ``reduce=False`` branch fails in fairseq 0.12)."""
        model_outputs = []  # the model's own outputs, for the word_ins log at alpha = 1

        def model_with_kd(*args, **kwargs):
            model_outputs.append(model(*args, **kwargs))
            return self.add_kd_term(model, model_outputs[-1], sample)

        loss, sample_size, logging_output = super().forward(model_with_kd, sample)
        if self.kd_alpha == 1:  # word_ins has factor 0 in the loss: its own pass logs it unweighted
            word_ins = model_outputs[-1]["word_ins"]
            with torch.no_grad():
                _, _, word_ins_logs = super().forward(lambda *_: {"word_ins": word_ins}, sample)
            logging_output["word_ins-loss"] = word_ins_logs["word_ins-loss"]
        return loss, sample_size, logging_output

    def add_kd_term(self, model, outputs, sample):
        """The model's ``outputs`` with the KD term: ``word_ins`` weighted (1 - alpha) f and
        ``kd`` = alpha f KD, precomputed (f = word_ins's factor); as they are at alpha = 0."""
        if "word_ins" not in outputs:
            raise ValueError("nat_word_kd distills into a 'word_ins' term; this model has none")
        if "kd" in outputs:
            raise ValueError("nat_word_kd adds a 'kd' term; this model already outputs one")
        if self.kd_alpha == 0:  # no teacher forward: nat_loss exactly
            return outputs
        word_ins = outputs["word_ins"]
        factor = word_ins.get("factor", 1.0)
        kd = self.compute_kd(model, word_ins, sample)
        return {
            **outputs,
            "word_ins": dict(word_ins, factor=(1.0 - self.kd_alpha) * factor),
            "kd": {"loss": kd * (self.kd_alpha * factor), "factor": self.kd_alpha * factor},
        }

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
        probs_T, ids_T, _ = self.task.teacher_soft_targets(
            sample, model, mask, temperature=self.kd_temperature, topk=self.kd_topk
        )
        lprobs_S = F.log_softmax(word_ins["out"][mask].float(), dim=-1)  # N x V
        return losses.kd_divergence(lprobs_S, probs_T, ids_T, self.kd_divergence, self.kd_beta, self.kd_skew).mean()
