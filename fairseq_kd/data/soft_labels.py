"""The top-K soft-label store: a teacher's top-K logits per target token, offline.

Chen et al. (2020) distill a BERT teacher through its top-K logits at every
target position; their code dumps hidden states to ``shelve`` files (about
3 KB a token). Here a store is a directory of memory-mapped arrays aligned
with fairseq's binarized target split (one row per target token, EOS
included, sentences in dataset order) plus ``header.json``
(:mod:`fairseq_kd.data.array_store` format and completion protocol):

- ``ids.npy``      tokens x K int32, the teacher's top-K word ids (student
  dictionary), by descending logit;
- ``logits.npy``   tokens x K float16, their values: raw logits of one teacher
  (the temperature is applied at training time, see
  ``losses.topk_soft_targets``), or for an ensemble T log q of the models'
  averaged probabilities q at the dump's temperature T (header
  ``temperature``; exact for a student at that ``--kd-temperature`` only);
- ``gold_logprob.npy``  tokens float32, the teacher's log-probability of the
  gold word (full softmax, T = 1): what the teacher's quality is measured by;
- ``offsets.npy``  (sentences + 1) int64: sentence i is rows offsets[i]:offsets[i+1].

With K = 8 that is 52 bytes a token (+ 8 a sentence). Stores of version 1
(before ``gold_logprob``), 2 (before ``teacher_kind``: a conditional_mlm
teacher) and 3 (before ``values``: top-K) are still read.

Two kinds of values (header ``values``):

- ``topk`` (default): the K most probable words, as above. Biased: the student
  learns the teacher renormalized over K words.
- ``sampled`` (``fairseq-kd-dump-soft-labels --store sampled --samples S``):
  S words drawn with replacement from the teacher's distribution at the
  dump's temperature T (header ``temperature``, ``samples``; ``topk`` = S
  columns), stored as the distinct drawn words with ``logits`` = T log(count / S)
  (slots left over hold weight 0: T log 0 = -inf). ``softmax(values / T)``
  gives the weights count / S back, so the student's KD cross-entropy is an
  unbiased estimate of the full-vocabulary one (Anshumann et al. 2025;
  :func:`fairseq_kd.losses.sampled_soft_targets`), exact in expectation at
  ``--kd-temperature T`` only, with no ``--kd-topk`` and only the forward KL
  (the other divergences are non-linear in q). ``gold_in_topk`` counts the
  gold word among the drawn words.

The teacher. ``teacher_kind`` is ``conditional_mlm`` (a BERT C-MLM teacher
scored over ``passes`` masked copies) or ``translation`` (autoregressive
fairseq models teacher-forced on the gold target; ``passes`` is null);
``teacher_checksums`` lists every checkpoint's sha256 and ``teacher_checksum``
is the one of a single teacher, for an ensemble the sha256 of the
colon-joined list (:func:`joined_checksum`). ``temperature`` is null when the
values are raw logits (exact at any student temperature), else the ensemble's
averaging temperature.

Teacher quality. A finished store's header holds ``teacher_quality``: over the
tokens it holds, how often the teacher's top-1 word is the gold word
(``top1_accuracy``), how often the gold word is among the stored K
(``gold_in_topk``) and the teacher's mean NLL of the gold word (``gold_nll``,
nats), with the counts they come from (a merge sums the parts' counts). A
teacher that is worse than the student it teaches is visible before any
student is trained.

The header records what the rows mean and what they belong to: ``topk``,
``passes``, ``teacher_kind``, ``temperature``, ``split``, the dictionary's
checksum and size, the split's sentence count, token count and sizes checksum, the teacher checkpoints'
sha256, and the sentence range ``[first, last)`` / token range the store
covers with ``num_shards`` / ``shard_id``. :meth:`SoftLabelStore.check`
refuses a store that does not match the dataset and dictionary it is used with.

Shards. A dump run as N shards (``fairseq-kd-dump-soft-labels --num-shards N``)
writes one *part* per shard in the layout of :mod:`fairseq_kd.data.parts`,
``OUT.parts/part-0000I-of-0000N/`` (written, and resumed after a kill, in
``OUT.parts/.part-0000I-of-0000N.tmp/``): a finished store of the same format
holding only its contiguous sentence range (its ``offsets`` start at 0), with
the header fields of the whole split (sentences, tokens, sizes checksum) and
its own ``sentence_range`` / ``token_range`` / ``num_shards`` / ``shard_id``.
:class:`SoftLabelStore` refuses to read a part; :func:`merge_store_parts`
checks the parts cover the split exactly once with the same settings
(:data:`PART_SETTINGS`) and concatenates them into the store one process writes.
"""
import os
import shutil
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from . import array_store, parts
from .array_store import StoreError

KIND = "soft_labels"
VERSION = 4
# 1: no gold_logprob array, no teacher_quality; 2: no teacher_kind (a C-MLM); 3: no values (top-K)
READABLE_VERSIONS = (1, 2, 3, 4)
TEACHER_KINDS = ("conditional_mlm", "translation")
VALUES = ("topk", "sampled")  # the header's ``values``: what the K columns of a row are


def target_sizes(dataset) -> np.ndarray:
    """Per-sentence target lengths (EOS included) of a LanguagePairDataset."""
    sizes = getattr(dataset, "tgt_sizes", None)
    if sizes is None:
        raise StoreError("the dataset has no target side: soft labels need a target split")
    return np.asarray(sizes, dtype=np.int64)


def joined_checksum(checksums: Sequence[str]) -> str:
    """``teacher_checksum`` of the teachers with these sha256s: the one of a single
    teacher, the sha256 of the colon-joined list for an ensemble."""
    import hashlib

    if len(checksums) == 1:
        return checksums[0]
    return hashlib.sha256(":".join(checksums).encode()).hexdigest()


def make_header(
    split: str,
    topk: int,
    passes: Optional[int],
    dictionary,
    sizes: Sequence[int],
    teacher_checksum: str,
    teacher: Optional[Dict[str, Any]] = None,
    num_shards: int = 1,
    shard_id: int = 0,
    sentence_range: Optional[Tuple[int, int]] = None,
    teacher_kind: str = "conditional_mlm",
    teacher_checksums: Optional[Sequence[str]] = None,
    temperature: Optional[float] = None,
    values: str = "topk",
) -> Dict[str, Any]:
    """The header of a store of ``split`` (``sizes``: all its target lengths).

    By default the store holds the whole split (shard 0 of 1); a part of a
    sharded dump holds ``sentence_range`` = [start, end) and records its shard.
    ``passes`` is None for a translation teacher; ``teacher_checksums`` defaults
    to ``[teacher_checksum]``; ``temperature`` is None for raw logits. ``values``
    is ``topk`` or ``sampled`` (then ``topk`` is the number of samples and
    ``temperature`` the one they were drawn at).
    """
    if teacher_kind not in TEACHER_KINDS:
        raise ValueError(f"teacher_kind {teacher_kind!r} is not one of {', '.join(TEACHER_KINDS)}")
    if values not in VALUES:
        raise ValueError(f"values {values!r} is not one of {', '.join(VALUES)}")
    if values == "sampled" and temperature is None:
        raise ValueError("a sampled store records the temperature its samples were drawn at")
    sizes = np.asarray(sizes, dtype=np.int64)
    start, end = sentence_range if sentence_range is not None else (0, len(sizes))
    if not 0 <= start <= end <= len(sizes):
        raise ValueError(f"sentence range [{start}, {end}) is not within the {len(sizes)} sentences of {split}")
    first_token = int(sizes[:start].sum())
    return {
        "kind": KIND,
        "version": VERSION,
        "split": split,
        "topk": int(topk),
        "passes": None if passes is None else int(passes),
        "teacher_kind": teacher_kind,
        "temperature": None if temperature is None else float(temperature),
        "values": values,
        "dictionary_checksum": array_store.dictionary_checksum(dictionary),
        "dictionary_size": len(dictionary),
        "sentences": int(len(sizes)),
        "tokens": int(sizes.sum()),
        "sizes_checksum": array_store.sizes_checksum(sizes),
        "teacher_checksum": teacher_checksum,
        "teacher_checksums": list(teacher_checksums) if teacher_checksums is not None else [teacher_checksum],
        "teacher": teacher or {},
        # Sharding: the [first, last) sentences and tokens of the split held here.
        "num_shards": int(num_shards),
        "shard_id": int(shard_id),
        "sentence_range": [int(start), int(end)],
        "token_range": [first_token, first_token + int(sizes[start:end].sum())],
    }


def _arrays(tokens: int, sentences: int, topk: int) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """The arrays of a store of ``sentences`` sentences, ``tokens`` target tokens."""
    return {
        "ids": ((tokens, topk), "int32"),
        "logits": ((tokens, topk), "float16"),
        "gold_logprob": ((tokens,), "float32"),
        "offsets": ((sentences + 1,), "int64"),
    }


QUALITY_COUNTS = ("tokens", "top1_correct", "gold_in_topk", "gold_nll_micronats")
"""Integer counts (the NLL summed in millionths of a nat: integer sums do not depend on
how a dump was sharded, so a merged store's header equals one process's)."""


def quality_counts(ids: np.ndarray, gold_logprob: np.ndarray, gold: np.ndarray) -> Dict[str, float]:
    """Counts of the teacher's quality over N tokens: ids N x K (descending),
    gold_logprob N, gold N (the gold word ids)."""
    ids, gold = np.asarray(ids), np.asarray(gold).reshape(-1, 1)
    return {
        "tokens": int(len(gold)),
        "top1_correct": int((ids[:, :1] == gold).sum()),
        "gold_in_topk": int((ids == gold).any(axis=1).sum()),
        "gold_nll_micronats": int(np.rint(-1e6 * np.asarray(gold_logprob, dtype=np.float64)).astype(np.int64).sum()),
    }


def quality_summary(counts: Dict[str, float]) -> Dict[str, float]:
    """The header's ``teacher_quality``: the counts and the rates they give."""
    n = max(int(counts["tokens"]), 1)
    return dict(
        {k: counts[k] for k in QUALITY_COUNTS},
        top1_accuracy=100.0 * counts["top1_correct"] / n,
        gold_in_topk_rate=100.0 * counts["gold_in_topk"] / n,
        gold_nll=counts["gold_nll_micronats"] / 1e6 / n,
    )


def measure_quality(arrays, target_of, chunk: int = 4096) -> Dict[str, float]:
    """``teacher_quality`` of a store's ``arrays`` (ids, gold_logprob, offsets);
    ``target_of(j)`` is the gold target (1-D ids) of its j-th sentence. Reads
    ``chunk`` sentences at a time."""
    offsets = np.asarray(arrays["offsets"])
    total = dict.fromkeys(QUALITY_COUNTS, 0)
    for first in range(0, len(offsets) - 1, chunk):
        last = min(first + chunk, len(offsets) - 1)
        a, b = int(offsets[first]), int(offsets[last])
        gold = np.concatenate([np.asarray(target_of(j)) for j in range(first, last)])
        if len(gold) != b - a:
            raise StoreError(f"{len(gold)} gold tokens for store rows [{a}, {b})")
        counts = quality_counts(arrays["ids"][a:b], arrays["gold_logprob"][a:b], gold)
        for k in QUALITY_COUNTS:
            total[k] += counts[k]
    return quality_summary(total)


def describe_quality(quality: Dict[str, float], topk: int, sampled: bool = False) -> str:
    """One line: the teacher's top-1 accuracy, gold NLL and top-K coverage (of a sampled
    store: how often the most drawn word is the gold word, and the gold word is drawn)."""
    if sampled:
        return (f"teacher's most drawn word = gold {quality['top1_accuracy']:.1f}%, gold NLL "
                f"{quality['gold_nll']:.3f} nats, gold word among the {topk} draws {quality['gold_in_topk_rate']:.1f}% "
                f"({quality['tokens']} tokens)")
    return (f"teacher top-1 accuracy {quality['top1_accuracy']:.1f}%, gold NLL {quality['gold_nll']:.3f} nats, "
            f"gold word in the stored top-{topk} {quality['gold_in_topk_rate']:.1f}% "
            f"({quality['tokens']} tokens)")


def create_or_resume(path: str, header: Dict[str, Any], sizes: Sequence[int]) -> array_store.PendingStore:
    """Open the unfinished store at ``path`` written with ``header``, or allocate one.

    ``sizes`` are the target lengths of the whole split; the store holds the
    header's ``sentence_range`` of them. Work units are those sentences (unit
    j = sentence start + j). ``offsets`` is written at creation, from 0.
    """
    store = array_store.resume(path, header)
    if store is not None:
        return store
    start, end = header["sentence_range"]
    sizes = np.asarray(sizes, dtype=np.int64)[start:end]
    store = array_store.create(path, header, _arrays(int(sizes.sum()), len(sizes), header["topk"]), units=len(sizes))
    store["offsets"][0] = 0
    store["offsets"][1:] = np.cumsum(sizes)
    store["offsets"].flush()
    return store


# ------------------------------------------------------------------ shards
PART_SETTINGS = ("kind", "version", "split", "topk", "passes", "teacher_kind", "temperature", "values",
                 "dictionary_checksum", "dictionary_size", "sentences", "tokens", "sizes_checksum",
                 "teacher_checksum", "teacher_checksums")
"""Header fields every part of one dump shares. The rest is the part's own range, and
``teacher`` (the checkpoint's file name, informative: its sha256 is what must match)."""


def merged_header(part: Dict[str, Any]) -> Dict[str, Any]:
    """The header one process writes for the whole split, from any of its parts."""
    header = {k: v for k, v in part.items() if k not in ("name", "path", "arrays")}
    return dict(header, num_shards=1, shard_id=0, sentence_range=[0, header["sentences"]],
                token_range=[0, header["tokens"]])


def merge_store_parts(out: str, remove_parts: bool = False, chunk_rows: int = 1 << 20) -> dict:
    """Concatenate the parts of the store ``out`` (``OUT.parts``, see :mod:`.parts`) into ``out``.

    Checks first and writes nothing when a check fails (StoreError / ValueError
    naming the parts): every part is finished, has the same K, passes, teacher kind, temperature,
    dictionary and split checksums and teacher hash (:data:`PART_SETTINGS`),
    and the sentence ranges cover the split exactly once
    (:func:`fairseq_kd.data.parts.check_parts`). The store is then written in
    a temporary folder beside ``out`` with :mod:`array_store`'s protocol (one
    work unit per part) and renamed to ``out``: it equals, array for array and
    header for header, the store of a single-process dump with the same
    batches of sentences (see ``fairseq-kd-dump-soft-labels``).

    Returns {"parts", "sentences", "tokens", "bytes"}.
    """
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        if os.path.exists(os.path.join(out, array_store.HEADER)):
            raise StoreError(f"{out} already holds a finished store; remove it to merge the parts again")
        raise StoreError(f"{out} exists and is not empty")
    found = parts.read_parts(out, KIND)
    parts.check_parts(found, PART_SETTINGS)
    found.sort(key=lambda p: p["sentence_range"])
    arrays = []
    for part in found:
        _, a = array_store.open_store(part["path"], kind=KIND)  # checks every array's shape
        (start, end), (first, last) = part["sentence_range"], part["token_range"]
        if a["ids"].shape != (last - first, part["topk"]) or len(a["offsets"]) != end - start + 1 \
                or int(a["offsets"][-1]) != last - first:
            raise StoreError(f"{part['path']}: arrays do not hold sentences [{start}, {end}), tokens [{first}, {last})")
        arrays.append(a)
    token_ranges = [p["token_range"] for p in found]
    if token_ranges[0][0] != 0 or token_ranges[-1][1] != found[0]["tokens"] or any(
            a[1] != b[0] for a, b in zip(token_ranges, token_ranges[1:])):
        raise StoreError(f"the parts' token ranges {token_ranges} do not cover the {found[0]['tokens']} tokens")

    header = merged_header(found[0])
    if all("teacher_quality" in p for p in found):
        header["teacher_quality"] = quality_summary(
            {k: sum(p["teacher_quality"][k] for p in found) for k in QUALITY_COUNTS})
    else:
        header.pop("teacher_quality", None)
    parent_of_out = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent_of_out, exist_ok=True)
    tmp = os.path.join(parent_of_out, f".{os.path.basename(os.path.normpath(out))}.merge-tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        store = array_store.create(tmp, header, _arrays(header["tokens"], header["sentences"], header["topk"]),
                                   units=len(found))
        store["offsets"][0] = 0
        for j, (part, a) in enumerate(zip(found, arrays)):
            (start, end), (first, last) = part["sentence_range"], part["token_range"]
            store["offsets"][start + 1:end + 1] = first + np.asarray(a["offsets"][1:])
            for name in [n for n in ("ids", "logits", "gold_logprob") if n in a]:  # chunked: parts can be larger than memory
                for row in range(0, last - first, chunk_rows):
                    stop = min(row + chunk_rows, last - first)
                    store[name][first + row:first + stop] = a[name][row:stop]
            store.mark_done([j])
        header = array_store.finish(store)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if remove_parts:
        shutil.rmtree(parts.parts_dir(out))
    nbytes = sum(os.path.getsize(os.path.join(out, f"{n}.npy")) for n in header["arrays"])
    return {"parts": len(found), "sentences": header["sentences"], "tokens": header["tokens"], "bytes": nbytes}


class SoftLabelStore:
    """A finished store, read-only and memory-mapped.

    ``store[i] -> (ids, logits)``: L_i x K int64 ids and float16 logits of
    sentence i (L_i = its target length, EOS included).
    """

    def __init__(self, path: str):
        self.path = path
        self.header, arrays = array_store.open_store(path, kind=KIND)
        if self.header.get("version") not in READABLE_VERSIONS:
            raise StoreError(f"{path}: store version {self.header.get('version')!r}, this code reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        self.quality = self.header.get("teacher_quality")  # None for version 1
        self.ids, self.logits, self.offsets = arrays["ids"], arrays["logits"], arrays["offsets"]
        self.split = self.header["split"]
        self.topk = int(self.header["topk"])
        passes = self.header.get("passes")
        self.passes = None if passes is None else int(passes)  # None: a translation teacher
        self.teacher_kind = self.header.get("teacher_kind", "conditional_mlm")  # versions 1, 2: C-MLM only
        self.temperature = self.header.get("temperature")  # None: raw logits, exact at any temperature
        self.values = self.header.get("values", "topk")  # versions 1-3: top-K
        self.sampled = self.values == "sampled"
        if self.ids.shape != self.logits.shape or self.ids.shape[1] != self.topk:
            raise StoreError(f"{path}: ids {self.ids.shape} and logits {self.logits.shape} do not hold K={self.topk}")
        if self.header.get("num_shards", 1) != 1 or self.header.get("sentence_range") != [0, self.header["sentences"]]:
            raise StoreError(
                f"{path} holds part {self.header.get('shard_id')} of {self.header.get('num_shards')} of a sharded "
                f"dump (sentences {self.header.get('sentence_range')}); merge the parts first "
                f"(fairseq-kd-merge-shards OUT)"
            )
        if len(self.offsets) != self.header["sentences"] + 1 or int(self.offsets[-1]) != len(self.ids):
            raise StoreError(f"{path}: offsets.npy does not match {self.header['sentences']} sentences")

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
