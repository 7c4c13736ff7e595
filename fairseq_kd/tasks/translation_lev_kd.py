"""``--task translation_lev_kd``: fairseq's ``translation_lev`` with an autoregressive teacher.

fairseq's ``translation_lev`` task builds the non-autoregressive batches (the
noised ``prev_target``); this task adds ``--teacher-path a.pt[:b.pt]``, an
online autoregressive teacher (or ensemble) loaded and owned by the task,
frozen, run under ``torch.no_grad()`` on the student's device and dtype, so
that ``--criterion nat_word_kd`` can distill its word distributions into a
NAT student (word-level KD, Kim & Rush 2016). The teacher and the interface
the criterion asks (``teacher_soft_targets``) are ``_kd_teacher.TeacherTask``'s.

Frames. ``translation_lev`` loads every split with ``prepend_bos=True``:

    NAT source   src_tokens   <s> x_1 .. x_m </s>   (left-padded by default)
    NAT target   target       <s> w_1 .. w_n </s>   (right-padded)

while the teacher was trained by ``--task translation`` without ``<s>``. The
teacher therefore runs teacher-forced on

    source              x_1 .. x_m </s>
    prev_output_tokens  </s> w_1 .. w_n         (EOS moved to the front)

and its output at step t predicts w_{t+1}: NAT target position j >= 1 reads
the teacher's distribution at step j - 1. Position 0 (``<s>``) has no teacher
distribution; the NAT models never predict it (it is never masked).
"""
import logging
from dataclasses import dataclass

import torch
from fairseq.tasks import register_task
from fairseq.tasks.translation_lev import TranslationLevenshteinConfig, TranslationLevenshteinTask

from ..errors import UsageError
from ._kd_teacher import SoftTargets, TeacherConfig, TeacherTask

logger = logging.getLogger(__name__)


def teacher_net_input(sample, bos: int, eos: int, pad: int) -> dict:
    """The AR teacher's teacher-forced ``net_input`` for a ``translation_lev`` batch.

    Args:
        sample: a batch whose ``net_input.src_tokens`` (B x S) and ``target``
            (B x T, right-padded) both start with ``<s>`` (``prepend_bos=True``).
        bos, eos, pad: the dictionary's symbols.

    Returns:
        {src_tokens: B x (S-1), src_lengths: B, prev_output_tokens: B x (T-1)}:
        the source without its ``<s>`` (padding side kept) and the target
        without ``<s>``, shifted right with EOS in front, as fairseq's collater
        builds it for ``--task translation``.
    """
    src = sample["net_input"]["src_tokens"]  # B x S
    target = sample["target"]  # B x T
    rows = torch.arange(src.size(0), device=src.device)
    bos_pos = src.ne(pad).int().argmax(1)  # first non-pad column, whatever the padding side
    if not src[rows, bos_pos].eq(bos).all() or not target[:, 0].eq(bos).all():
        raise UsageError(
            "translation_lev_kd expects sources and right-padded targets that start "
            "with <s> (translation_lev loads them with prepend_bos=True; no --left-pad-target)"
        )
    keep = torch.ones_like(src, dtype=torch.bool)
    keep[rows, bos_pos] = False
    src_T = src[keep].view(src.size(0), src.size(1) - 1)  # B x (S-1)
    tgt_T = target[:, 1:]  # B x (T-1): w_1 .. w_n </s> pad
    prev_T = torch.cat([tgt_T.new_full((tgt_T.size(0), 1), eos), tgt_T[:, :-1]], dim=1)
    prev_T = prev_T.masked_fill(tgt_T.eq(pad), pad)
    return {
        "src_tokens": src_T,
        "src_lengths": sample["net_input"]["src_lengths"] - 1,
        "prev_output_tokens": prev_T,
    }


@dataclass
class TranslationLevKDConfig(TeacherConfig, TranslationLevenshteinConfig):
    """``translation_lev``'s options and ``--teacher-path`` (an autoregressive teacher)."""


@register_task("translation_lev_kd", dataclass=TranslationLevKDConfig)
class TranslationLevKDTask(TeacherTask, TranslationLevenshteinTask):
    cfg: TranslationLevKDConfig

    @classmethod
    def check_kd_config(cls, cfg: TranslationLevKDConfig) -> None:
        if cfg.teacher_path and cfg.left_pad_target:  # fail before training starts, not at a batch
            raise UsageError(
                "translation_lev_kd expects right-padded targets that start with <s> (teacher_net_input reads "
                "them from target column 0), got --left-pad-target: remove it (targets are right-padded by default)"
            )

    def teacher_soft_targets(self, sample, model, mask, temperature=1.0, topk=0) -> SoftTargets:
        """The AR teacher's distribution at the NAT target positions selected by ``mask``.

        Args:
            sample: a ``translation_lev`` batch (``<s>`` prepended, see the module
                docstring).
            model: the student, whose device and dtype the teacher follows.
            mask: B x T booleans over ``sample["target"]``; column 0 (``<s>``)
                must be False.
            temperature, topk: the criterion's options (``losses.soft_targets``).

        Returns:
            ``SoftTargets`` for the N = mask.sum() positions in row-major order:
            N x V (or N x K) probabilities, N x K ids or None, and the teacher's
            summed NLL of the gold words at temperature 1.
        """
        self.check_has_teacher(sample)
        if mask[:, 0].any():
            raise ValueError("no teacher distribution for <s> (target column 0): exclude it from the mask")
        tgt = self.tgt_dict
        net_input = teacher_net_input(sample, tgt.bos(), tgt.eos(), tgt.pad())
        mask_T = mask[:, 1:]  # NAT position j <- teacher step j - 1
        logits_T = [z[mask_T] for z in self.run_teacher(model, net_input)]  # M x [N x V], this call's own
        return self.online_soft_targets(logits_T, sample["target"][mask], temperature, topk)
