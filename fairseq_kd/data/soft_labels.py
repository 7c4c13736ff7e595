"""The top-K soft-label store: a teacher's top-K logits per target token, offline.

Chen et al. (2020) distill a BERT teacher through its top-K logits at every
target position; their code dumps hidden states to ``shelve`` files (about
3 KB a token). Here a store is a directory of memory-mapped arrays aligned
with fairseq's binarized target split (one row per target token, EOS
included, sentences in dataset order) plus ``header.json``
(:mod:`fairseq_kd.data.array_store` format and completion protocol):

- ``ids.npy``      tokens x K int32, the teacher's top-K word ids (student
  dictionary), by descending logit;
- ``logits.npy``   tokens x K float16, their raw logits (the temperature is
  applied at training time, see ``losses.topk_soft_targets``);
- ``offsets.npy``  (sentences + 1) int64: sentence i is rows offsets[i]:offsets[i+1].

With K = 8 that is 48 bytes a token (+ 8 a sentence).

The header records what the rows mean and what they belong to: ``topk``,
``passes``, ``split``, the dictionary's checksum and size, the split's
sentence count, token count and sizes checksum, the teacher checkpoint's
sha256, and the sentence range ``[first, last)`` / token range the store
covers with ``num_shards`` / ``shard_id`` (a whole split today: shard 0 of 1;
a sharded dump would write contiguous ranges and a merge would concatenate
them). :meth:`SoftLabelStore.check` refuses a store that does not match the
dataset and dictionary it is used with.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from . import array_store
from .array_store import StoreError

KIND = "soft_labels"
VERSION = 1


def target_sizes(dataset) -> np.ndarray:
    """Per-sentence target lengths (EOS included) of a LanguagePairDataset."""
    sizes = getattr(dataset, "tgt_sizes", None)
    if sizes is None:
        raise StoreError("the dataset has no target side: soft labels need a target split")
    return np.asarray(sizes, dtype=np.int64)


def make_header(
    split: str,
    topk: int,
    passes: int,
    dictionary,
    sizes: Sequence[int],
    teacher_checksum: str,
    teacher: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The header of a store of the whole ``split`` (shard 0 of 1)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return {
        "kind": KIND,
        "version": VERSION,
        "split": split,
        "topk": int(topk),
        "passes": int(passes),
        "dictionary_checksum": array_store.dictionary_checksum(dictionary),
        "dictionary_size": len(dictionary),
        "sentences": int(len(sizes)),
        "tokens": int(sizes.sum()),
        "sizes_checksum": array_store.sizes_checksum(sizes),
        "teacher_checksum": teacher_checksum,
        "teacher": teacher or {},
        # Sharding: the [first, last) sentences and tokens of the split held here.
        "num_shards": 1,
        "shard_id": 0,
        "sentence_range": [0, int(len(sizes))],
        "token_range": [0, int(sizes.sum())],
    }


def create_or_resume(path: str, header: Dict[str, Any], sizes: Sequence[int]) -> array_store.PendingStore:
    """Open the unfinished store at ``path`` written with ``header``, or allocate one.

    Work units are sentences. ``offsets`` is written at creation.
    """
    store = array_store.resume(path, header)
    if store is not None:
        return store
    sizes = np.asarray(sizes, dtype=np.int64)
    tokens, K = int(sizes.sum()), header["topk"]
    store = array_store.create(
        path,
        header,
        {
            "ids": ((tokens, K), "int32"),
            "logits": ((tokens, K), "float16"),
            "offsets": ((len(sizes) + 1,), "int64"),
        },
        units=len(sizes),
    )
    store["offsets"][0] = 0
    store["offsets"][1:] = np.cumsum(sizes)
    store["offsets"].flush()
    return store


class SoftLabelStore:
    """A finished store, read-only and memory-mapped.

    ``store[i] -> (ids, logits)``: L_i x K int64 ids and float16 logits of
    sentence i (L_i = its target length, EOS included).
    """

    def __init__(self, path: str):
        self.path = path
        self.header, arrays = array_store.open_store(path, kind=KIND)
        if self.header.get("version") != VERSION:
            raise StoreError(f"{path}: store version {self.header.get('version')!r}, this code reads {VERSION}")
        self.ids, self.logits, self.offsets = arrays["ids"], arrays["logits"], arrays["offsets"]
        self.split = self.header["split"]
        self.topk = int(self.header["topk"])
        self.passes = int(self.header["passes"])
        if self.ids.shape != self.logits.shape or self.ids.shape[1] != self.topk:
            raise StoreError(f"{path}: ids {self.ids.shape} and logits {self.logits.shape} do not hold K={self.topk}")
        if len(self.offsets) != self.header["sentences"] + 1 or int(self.offsets[-1]) != len(self.ids):
            raise StoreError(f"{path}: offsets.npy does not match {self.header['sentences']} sentences")
        if self.header.get("num_shards", 1) != 1 or self.header.get("sentence_range") != [0, self.header["sentences"]]:
            raise StoreError(
                f"{path} holds part {self.header.get('shard_id')} of a sharded dump "
                f"(sentences {self.header.get('sentence_range')}); merge the parts first"
            )

    def check(self, dataset, dictionary) -> None:
        """Raise StoreError unless this store was dumped for ``dataset`` with ``dictionary``."""
        what = f"the {self.split} split and dictionary it is used with"
        sizes = target_sizes(dataset)
        array_store.expect(self.header, "sentences", int(len(sizes)), self.path, what)
        array_store.expect(self.header, "tokens", int(sizes.sum()), self.path, what)
        array_store.expect(self.header, "sizes_checksum", array_store.sizes_checksum(sizes), self.path, what)
        array_store.expect(self.header, "dictionary_size", len(dictionary), self.path, what)
        array_store.expect(
            self.header, "dictionary_checksum", array_store.dictionary_checksum(dictionary), self.path, what
        )
        if not np.array_equal(np.diff(np.asarray(self.offsets)), sizes):
            raise StoreError(f"{self.path}: offsets.npy does not match the split's sentence lengths")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        return (
            torch.from_numpy(self.ids[a:b].astype(np.int64)),
            torch.from_numpy(np.array(self.logits[a:b])),
        )

    def bytes(self) -> int:
        return int(self.ids.nbytes + self.logits.nbytes + self.offsets.nbytes)
