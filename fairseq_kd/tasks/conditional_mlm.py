"""``--task conditional_mlm``: fine-tune BERT as a Conditional Masked LM teacher.

Chen et al. (2020), Distilling Knowledge Learned in BERT for Text Generation,
section 3.1: on parallel data, the input is ``[CLS] x [SEP] y [SEP]`` (segment
ids 0 / 1) and only target slots are masked, so the model learns
p(y_t | x, y_{\\t}) from the source and both sides of the target:

    L = - sum over masked target slots t of log p(y_t | x, y_masked)

Each target slot (the final one included, which learns </s>) is masked with
probability ``--mask-prob`` and always replaced by [MASK]; a sentence with no
masked slot is redrawn. Training masks are a deterministic function of (seed,
epoch, sentence index) and change every epoch, as in the paper's code (which
draws a fresh mask whenever it sees a sentence); every other split (valid) is
masked once, from (seed, sentence index), so its masked-token loss and accuracy
compare across epochs and runs. A batch's ``target`` holds the gold word at
masked slots and <pad> elsewhere, ``net_input["positions"]`` marks the masked
slots (the model projects only those onto the vocabulary, about 15% of the
slots) and ``ntokens`` counts them, so fairseq's stock
``label_smoothed_cross_entropy --report-accuracy`` gives the masked-token loss
and accuracy (logged on valid as ``accuracy``):

    fairseq-train DATA --user-dir fairseq_kd --task conditional_mlm \\
        --arch bert_teacher_base --bert-path DIR \\
        --criterion label_smoothed_cross_entropy --label-smoothing 0 --report-accuracy ...

DATA is WordPiece text (``fairseq-kd-bert-tokenize``) binarized with
``fairseq-preprocess --joined-dictionary``; the student trains on the same DATA.
"""
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, data_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from ..errors import UsageError

logger = logging.getLogger(__name__)


@dataclass
class ConditionalMLMConfig(TranslationConfig):
    mask_prob: float = field(
        default=0.15, metadata={"help": "probability of masking each target slot (the final </s> slot included)"}
    )
    seed: int = II("common.seed")


def draw_mask(length: int, mask_prob: float) -> np.ndarray:
    """``length`` booleans, each True with probability ``mask_prob``; redrawn
    until at least one is True (uses numpy's global generator: call it inside
    ``data_utils.numpy_seed``)."""
    while True:
        mask = np.random.rand(length) < mask_prob
        if mask.any():
            return mask


def pass_mask(length: int, passes: int, p: int) -> torch.Tensor:
    """Slots masked at pass ``p`` of a sentence of ``length`` target tokens:
    p, p + P, p + 2P, ... with P = ``passes`` (P = 0: one slot per pass, P = length)."""
    period = length if passes <= 0 else passes
    return torch.arange(length) % period == p


def num_passes(length: int, passes: int) -> int:
    """Passes that mask something: min(P, length), or length when P = 0."""
    return length if passes <= 0 else min(passes, length)


class ConditionalMaskedDataset(BaseWrapperDataset):
    """Wraps a LanguagePairDataset; batches become C-MLM inputs and targets.

    ``per_epoch`` (the training split): masks are drawn from (seed, epoch,
    index). Such a dataset must not let fairseq reuse its epoch iterator:
    a reused iterator keeps its DataLoader workers, whose copies of the dataset
    never see ``set_epoch``, so with ``--num-workers`` >= 1 every epoch would
    repeat the first epoch's masks. Otherwise (valid, test) the masks are fixed:
    drawn from (seed, 0, index) whatever the epoch."""

    def __init__(self, dataset, mask_idx: int, mask_prob: float, seed: int, per_epoch: bool = True):
        super().__init__(dataset)
        self.mask_idx, self.mask_prob, self.seed = mask_idx, mask_prob, seed
        self.per_epoch = per_epoch
        self.epoch = 1

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.epoch = epoch

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        # Per-epoch masks: a fresh iterator (and fresh workers) each epoch.
        return not self.per_epoch

    def __getitem__(self, index):
        item = self.dataset[index]
        with data_utils.numpy_seed(self.seed, self.epoch if self.per_epoch else 0, index):
            item["cmlm_mask"] = torch.from_numpy(draw_mask(len(item["target"]), self.mask_prob))
        return item

    def collater(self, samples, pad_to_length=None):
        batch = self.dataset.collater(samples, pad_to_length=pad_to_length)
        if len(samples) == 0 or "id" not in batch:
            return batch
        by_id = {s["id"]: s for s in samples}
        target = batch["target"]  # B x T, right-padded, in the collater's order
        mask = torch.zeros_like(target, dtype=torch.bool)
        for b, i in enumerate(batch["id"].tolist()):
            m = by_id[i]["cmlm_mask"]
            mask[b, : len(m)] = m
        pad = self.dataset.tgt_dict.pad()
        batch["net_input"] = {
            "src_tokens": batch["net_input"]["src_tokens"],
            "src_lengths": batch["net_input"]["src_lengths"],
            "tgt_tokens": target.masked_fill(mask, self.mask_idx),
            "positions": mask,  # score the masked slots only
        }
        batch["target"] = target.masked_fill(~mask, pad)  # loss on masked slots only
        batch["ntokens"] = int(mask.sum())
        return batch


@register_task("conditional_mlm", dataclass=ConditionalMLMConfig)
class ConditionalMLMTask(TranslationTask):
    cfg: ConditionalMLMConfig

    def __init__(self, cfg: ConditionalMLMConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        if list(src_dict.symbols) != list(tgt_dict.symbols):
            raise UsageError(
                "--task conditional_mlm needs one dictionary for source and target: "
                "binarize with fairseq-preprocess --joined-dictionary"
            )
        if not 0.0 < cfg.mask_prob <= 1.0:
            raise UsageError(f"--mask-prob must be in (0, 1], got {cfg.mask_prob}")
        if cfg.left_pad_target:  # ConditionalMaskedDataset lays masks out from target column 0
            raise UsageError(
                "conditional_mlm expects right-padded targets (masks are laid out from target column 0), "
                "got --left-pad-target: remove it (targets are right-padded by default)"
            )
        self.mask_idx = len(tgt_dict)  # [MASK]: one past the dictionary (see bert_teacher)

    def load_pair_dataset(self, split, epoch=1, combine=True):
        """The plain LanguagePairDataset of ``split`` (what the student reads)."""
        super().load_dataset(split, epoch=epoch, combine=combine)
        return self.datasets[split]

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        self.datasets[split] = ConditionalMaskedDataset(
            self.datasets[split], self.mask_idx, self.cfg.mask_prob, self.cfg.seed,
            per_epoch=split == self.cfg.train_subset,
        )
