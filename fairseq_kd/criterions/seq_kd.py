"""``--criterion seq_kd``: train on the gold target and the teacher's output of the same source.

Kim & Rush (2016), Sequence-Level Knowledge Distillation: sequence-level KD
trains on the teacher's beam output; interpolating with the gold data gives

    loss = (1 - alpha) * LS-NLL(y_gold | x) + alpha * LS-NLL(y_teacher | x)

where each term is fairseq's label-smoothed NLL (``--label-smoothing``),
summed over the non-pad target tokens of its own sequence (EOS included), and
``sample_size`` = the gold ``ntokens`` (fairseq's autoregressive convention).
alpha = 0 is exactly ``label_smoothed_cross_entropy``; alpha = 1 is plain
sequence-level KD (the same as training on the distilled corpus alone, up to
the normalization by gold tokens).

The teacher's outputs come from the task: ``--task translation_kd
--distilled-data DIR`` with DIR written by ``fairseq-kd-distill-corpus`` (the
teacher interface's ``has_distilled_targets``, ``tasks/_kd_teacher.py``); each
batch then carries ``sample["distilled"]`` (target and prev_output_tokens in
the batch's own order). The model runs twice per batch: once teacher-forced on
the gold prefix, once on the distilled prefix, with the same encoder input.
A term whose weight is 0 is computed without gradients, for its log only. A
batch without distilled targets (a split with no distilled counterpart) is
scored on the gold term alone.

Logged per token, unweighted, in base 2: ``loss``, ``nll_loss`` (gold, as
fairseq), ``distilled_loss`` and ``distilled_nll_loss`` (per distilled token).

``reduce=False`` returns the gold term's per-token losses as
``label_smoothed_cross_entropy`` does (see ``_common``: a (B*T) x 1 column, 0
at pads) when the distilled term has no weight in the batch (alpha = 0, or no
distilled targets). Otherwise it is an error: the two terms score different
token sequences (the gold and the teacher's output, of other lengths), so no
per-token loss of the gold target sums to the interpolated loss.
"""
import contextlib
from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterionConfig

from .. import losses
from ..errors import UsageError
from ..tasks._kd_teacher import TeacherTask
from ._common import LabelSmoothedBaseCriterion, check_weight, log_per_count_base2, summed_data


@dataclass
class SeqKDCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    kd_alpha: float = field(
        default=0.5,
        metadata={
            "help": "weight of the distilled term: (1-alpha)*NLL(gold) + alpha*NLL(distilled); "
            "0 = gold only, 1 = plain sequence-level KD"
        },
    )


@register_criterion("seq_kd", dataclass=SeqKDCriterionConfig)
class SeqKDCriterion(LabelSmoothedBaseCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        kd_alpha=0.5,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        check_weight("--kd-alpha", kd_alpha)
        if kd_alpha > 0 and not (isinstance(task, TeacherTask) and task.has_distilled_targets()):
            raise UsageError(
                "--criterion seq_kd needs the teacher's outputs: --task translation_kd "
                "--distilled-data DIR (written by fairseq-kd-distill-corpus)"
            )
        self.kd_alpha = kd_alpha

    def forward(self, model, sample, reduce=True):
        has_distilled = "distilled" in sample
        if not reduce and has_distilled and self.kd_alpha > 0:
            raise ValueError(
                f"seq_kd has no per-token losses (reduce=False) at --kd-alpha {self.kd_alpha}: its distilled "
                "term scores the teacher's output, not the gold target's tokens; use reduce=True, or "
                "--kd-alpha 0 for the gold term's per-token losses"
            )
        gold_grad = not has_distilled or self.kd_alpha < 1.0
        with _grad(gold_grad):
            net_output = model(**sample["net_input"])
            loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size, logging_output = self.gold_logging_output(loss, nll_loss, sample)
        if has_distilled:
            distilled = sample["distilled"]
            net_input_D = dict(sample["net_input"], prev_output_tokens=distilled["prev_output_tokens"])
            with _grad(self.kd_alpha > 0.0):
                net_output_D = model(**net_input_D)
                loss_D, nll_loss_D = self.compute_loss(
                    model, net_output_D, {"target": distilled["target"]}, reduce=True
                )
            if reduce:  # else alpha = 0 (see above): the gold term's per-token losses
                loss = losses.interpolate(loss, loss_D, self.kd_alpha)
            logging_output.update(
                loss=summed_data(loss),
                distilled_loss=loss_D.data,
                distilled_nll_loss=nll_loss_D.data,
                distilled_ntokens=distilled["ntokens"],
            )
        self.log_accuracy(model, net_output, sample, logging_output)
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        log_per_count_base2(logging_outputs, ["distilled_loss", "distilled_nll_loss"], "distilled_ntokens")


def _grad(enabled: bool):
    """No gradients for a term whose weight is 0 (it is computed for its log only)."""
    return contextlib.nullcontext() if enabled else torch.no_grad()
