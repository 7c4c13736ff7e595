"""``--task sentence_prediction_kd``: sentence classification with a teacher's logits.

fairseq's ``sentence_prediction`` task plus ``--teacher-logits DIR``, a store
written offline by ``fairseq-kd-dump-logits`` for one split (Tang et al. 2019
distill BERT's logits into a BiLSTM). Batches of that split carry
``sample["teacher_logits"]`` (B x C, float32, in the batch's order); other
splits (validation) are plain ``sentence_prediction`` batches.

Examples without a gold label (the augmented transfer set) have target -1:
``fairseq-kd-augment`` writes their label as ``<unk>``, which the label
dictionary maps to its unk index, 3, and the task's offset of -4 (the
dictionary's special symbols) to -1. ``--criterion logit_mse`` then uses only
the logit MSE on them.

The store is checked against the split on load (sentence count, per-sentence
lengths, input and label dictionaries, number of classes): a store made for
another split, tokenization or label order is refused, never misaligned.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from fairseq.data import data_utils
from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

from ..data.logits_store import LogitsStore, TeacherLogitsDataset
from ..errors import MissingFileError, UsageError

logger = logging.getLogger(__name__)


@dataclass
class SentencePredictionKDConfig(SentencePredictionConfig):
    teacher_logits: Optional[str] = field(
        default=None,
        metadata={
            "help": "directory of a classifier-logit store written by fairseq-kd-dump-logits for "
            "the training split (its header names the split); batches of that split then carry "
            "the teacher's logits"
        },
    )


@register_task("sentence_prediction_kd", dataclass=SentencePredictionKDConfig)
class SentencePredictionKDTask(SentencePredictionTask):
    cfg: SentencePredictionKDConfig

    def __init__(self, cfg: SentencePredictionKDConfig, data_dictionary, label_dictionary):
        super().__init__(cfg, data_dictionary, label_dictionary)
        self.teacher_logits: Optional[LogitsStore] = None
        if cfg.teacher_logits:
            if not os.path.isdir(cfg.teacher_logits):
                raise MissingFileError(f"--teacher-logits directory not found: {cfg.teacher_logits}")
            if cfg.regression_target:
                raise UsageError("--teacher-logits is for classification; --regression-target is set")
            self.teacher_logits = LogitsStore(cfg.teacher_logits)

    def load_dataset(self, split, combine=False, **kwargs):
        dataset = super().load_dataset(split, combine=combine, **kwargs)
        self._log_unlabelled(split)
        store = self.teacher_logits
        if store is None or store.split != split:
            return dataset  # e.g. validation: scored on the gold labels only
        store.check(self.cfg.data, split, self.cfg.num_classes)  # raises on any misalignment
        logger.info(f"teacher logits for {split}: {store.path} ({len(store)} x {store.num_classes})")
        self.datasets[split] = TeacherLogitsDataset(dataset, store.logits)
        return self.datasets[split]

    def _log_unlabelled(self, split) -> None:
        if self.cfg.regression_target:
            return
        label = os.path.join(self.cfg.data, "label", split)
        if not os.path.exists(label + ".idx"):
            logger.info(f"{split}: no gold labels (label/{split} not found)")
            return
        labels = data_utils.load_indexed_dataset(label, self.label_dictionary)
        # Each item is [label, eos]: count unk ids in the whole memory-mapped buffer.
        buffer = getattr(labels, "_bin_buffer", None)
        if buffer is None:
            return
        ids = np.frombuffer(buffer, dtype=labels._index.dtype)
        n = int((ids == self.label_dictionary.unk()).sum())
        if n:
            logger.info(f"{split}: {n} of {len(labels)} examples have no gold label (label <unk>)")
