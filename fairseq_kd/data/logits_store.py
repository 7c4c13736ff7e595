"""The classifier-logit store: a teacher's logits for every sentence of a split.

Written by ``fairseq-kd-dump-logits``, read by ``--task sentence_prediction_kd
--teacher-logits DIR`` (Tang et al. 2019: the student regresses the teacher's
logits). An :mod:`array_store` store with one array and one work unit per
sentence::

    logits.npy   float32 [sentences, C]   row i = sentence i of the split

and a header with ``kind = "classifier_logits"``, ``split``, ``sentences``,
``num_classes``, and fingerprints of the data the logits are aligned with (the
student's binarized split: ``sizes_checksum`` over its per-sentence lengths,
``dictionary_checksum`` of its input dictionary, ``label_dictionary_checksum``),
plus ``teacher_sha256``. The teacher may read another tokenization of the same
sentences (BERT WordPiece vs the student's words): alignment is by line.
"""
import os
from typing import Optional

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, data_utils

from . import array_store
from ..errors import MissingFileError, UsageError

KIND = "classifier_logits"


def input_dictionary(data: str):
    """The input dictionary as fairseq's sentence_prediction task loads it (with <mask>)."""
    from fairseq.tasks.sentence_prediction import SentencePredictionTask

    path = os.path.join(data, "input0", "dict.txt")
    if not os.path.isfile(path):
        raise MissingFileError(f"{data} is not a sentence_prediction data directory: {path} not found")
    return SentencePredictionTask.load_dictionary(path)


def label_dictionary(data: str):
    """The label dictionary of a classification data directory, or None (regression)."""
    from fairseq.tasks.sentence_prediction import SentencePredictionTask

    path = os.path.join(data, "label", "dict.txt")
    return SentencePredictionTask.load_dictionary(path) if os.path.isfile(path) else None


def split_fingerprint(data: str, split: str, dictionary) -> dict:
    """Sentence count and sizes checksum of ``input0`` (and ``input1``) of a split."""
    sizes = []
    for key in ("input0", "input1"):
        dataset = data_utils.load_indexed_dataset(os.path.join(data, key, split), dictionary)
        if dataset is None:
            if key == "input0":
                raise MissingFileError(f"split {split!r} not found in {data}: no {key}/{split}.bin/.idx")
            continue
        sizes.append(np.asarray(dataset.sizes, dtype=np.int64))
    if len(sizes) == 2 and len(sizes[0]) != len(sizes[1]):
        raise UsageError(f"{data}: input0/{split} has {len(sizes[0])} sentences, input1/{split} {len(sizes[1])}")
    return {"sentences": int(len(sizes[0])), "sizes_checksum": array_store.sizes_checksum(np.concatenate(sizes))}


def labels_of(data: str, split: str, label_dict) -> Optional[list]:
    """The gold label strings of a split (one per sentence), or None without labels."""
    if label_dict is None:
        return None
    dataset = data_utils.load_indexed_dataset(os.path.join(data, "label", split), label_dict)
    if dataset is None:
        return None
    return [label_dict.string(dataset[i]) for i in range(len(dataset))]


def fingerprint(data: str, split: str) -> dict:
    """Header fields that tie a store to the data it is aligned with."""
    labels = label_dictionary(data)
    return dict(
        split_fingerprint(data, split, input_dictionary(data)),
        split=split,
        dictionary_checksum=array_store.dictionary_checksum(input_dictionary(data)),
        label_dictionary_checksum=array_store.dictionary_checksum(labels) if labels is not None else None,
    )


class LogitsStore:
    """A finished classifier-logit store opened read-only (memory-mapped)."""

    def __init__(self, path: str):
        self.path = path
        self.header, arrays = array_store.open_store(path, kind=KIND)
        self.logits = arrays["logits"]  # sentences x C, float32
        self.split = self.header["split"]
        self.num_classes = int(self.header["num_classes"])

    def check(self, data: str, split: str, num_classes: int) -> None:
        """Raise StoreError unless the store belongs to ``split`` of ``data``."""
        what = f"split {split!r} of {data}"
        actual = fingerprint(data, split)
        for field in ("split", "sentences", "sizes_checksum", "dictionary_checksum", "label_dictionary_checksum"):
            array_store.expect(self.header, field, actual[field], self.path, what)
        array_store.expect(self.header, "num_classes", num_classes, self.path, "--num-classes")

    def __len__(self) -> int:
        return len(self.logits)


class TeacherLogitsDataset(BaseWrapperDataset):
    """Adds ``sample["teacher_logits"]`` (B x C float32) to each batch.

    Rows follow ``sample["id"]`` (the sentence indices of the batch in the
    batch's order), so shuffling, bucketing and sharding keep each row with its
    sentence.
    """

    def __init__(self, dataset, logits: np.ndarray):
        super().__init__(dataset)
        if len(logits) != len(dataset):
            raise UsageError(f"{len(logits)} rows of teacher logits for {len(dataset)} sentences")
        self.logits = logits

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if len(samples) == 0 or "id" not in batch:
            return batch
        ids = batch["id"].numpy()
        batch["teacher_logits"] = torch.from_numpy(np.array(self.logits[ids], dtype=np.float32))  # B x C
        return batch
