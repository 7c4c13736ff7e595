"""The distilled corpus: a teacher's outputs for a split, as a fairseq data directory.

``fairseq-kd-distill-corpus DATA --subset S --out DIR`` (sequence-level KD,
Kim & Rush 2016) writes, for split S of source language ``src`` and target
language ``tgt``:

- ``DIR/S.src-tgt.src.{bin,idx}``: the original source (copied byte for byte);
- ``DIR/S.src-tgt.tgt.{bin,idx}``: the teacher's outputs, in the split's
  sentence order, binarized with the original dictionaries (copied as
  ``DIR/dict.<lang>.txt``), so DIR is a data directory for ``fairseq-train``
  (``--task translation``, ``translation_lev``, ``translation_kd
  --distilled-data DIR``);
- ``DIR/S.src``, ``DIR/S.tgt``, ``DIR/S.tgt.gold``: source, teacher output and
  reference as text, one sentence a line, in the dictionary's (BPE-level) tokens;
- ``DIR/distill.S.json`` (:func:`summary_name`): the run's summary, and what
  the corpus belongs to: the split's source and target sizes checksums and
  both dictionaries' checksums, which :func:`check_summary` compares with the
  data it is used with.

:func:`write_corpus` writes everything in a temporary folder inside DIR and
moves it into place, ``distill.S.json`` last: a killed run never leaves a split
that reads as finished.

Shards. A split decoded by N shards leaves one part per shard in the layout of
:mod:`fairseq_kd.data.parts`, with the output T = ``DIR/S``: ``DIR/S.parts/
part-0000I-of-0000N/`` holds ``targets.{bin,idx}`` (the distilled targets of
its sentence range, in id order), ``S.tgt`` (their text) and ``header.json``
(kind ``distilled_corpus``: range, shard, the settings every part must share
(:data:`PART_SETTINGS`) and the per-sentence choices the merged summary needs).
:func:`merge_parts` checks them and writes the same files, byte for byte (only
the timing fields of the JSON differ), as one process.
"""
import json
import os
import shutil
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from . import parts
from ..errors import MissingFileError, UsageError
from .atomic import atomic_open

KIND = "distilled_corpus"  # the ``kind`` of a corpus part's header

OPTIONS = ("beam", "nbest", "select", "lenpen", "max_len_a", "max_len_b", "remove_bpe")
"""The command's options a corpus records (and all its parts must share)."""

PART_SETTINGS = ("subset", "source_lang", "target_lang", "impl", *OPTIONS, "sentences", "sizes_checksum",
                 "tgt_sizes_checksum", "dictionary_checksum", "teacher_sha256")
"""The settings of a split's decoding: every part of one corpus split has them equal."""


# -------------------------------------------------------------------- paths
def summary_name(split: str) -> str:
    """``distill.<split>.json``: the summary that marks a finished distilled split."""
    return f"distill.{split}.json"


def output(out: str, subset: str) -> str:
    """``OUT/<subset>``: the output T of a split, whose parts are in ``T.parts`` (:mod:`.parts`)."""
    return os.path.join(out, subset)


def split_prefix(data: str, split: str, src: str, tgt: str) -> Tuple[str, str]:
    """(prefix for ``<prefix><lang>.{bin,idx}``, "src-tgt" or "tgt-src") as fairseq's
    translation task finds it; raises FileNotFoundError naming both candidates."""
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = os.path.join(data, f"{split}.{pair}.")
        if os.path.exists(prefix + src + ".idx") and os.path.exists(prefix + src + ".bin"):
            return prefix, pair
    raise MissingFileError(
        f"no binarized {split} split in {data}: looked for {split}.{src}-{tgt}.{src}.{{bin,idx}} "
        f"and {split}.{tgt}-{src}.{src}.{{bin,idx}}"
    )


def check_dictionaries(out: str, data: str, langs: Sequence[str]) -> None:
    """Raise unless DATA has ``dict.<lang>.txt`` for ``langs`` and those OUT already
    holds are the same files (OUT would mix corpora made from other data)."""
    for lang in langs:
        original, existing = os.path.join(data, f"dict.{lang}.txt"), os.path.join(out, f"dict.{lang}.txt")
        if not os.path.isfile(original):
            raise MissingFileError(f"{original} not found")
        if os.path.exists(existing) and not _same_file(original, existing):
            raise UsageError(f"{existing} differs from {original}: --out holds a corpus made from other data")


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


# ------------------------------------------------------------------ writing
def copy_binarized(prefix: str, dest_prefix: str, lang: str) -> None:
    for ext in ("bin", "idx"):
        shutil.copyfile(f"{prefix}{lang}.{ext}", f"{dest_prefix}{lang}.{ext}")


def write_indexed(prefix: str, items: Sequence[torch.Tensor], impl: str, vocab_size: int) -> None:
    """Binarize token-id tensors as fairseq's indexed dataset ``prefix.{bin,idx}``."""
    from fairseq.data import indexed_dataset

    builder = indexed_dataset.make_builder(prefix + ".bin", impl=impl, vocab_size=vocab_size)
    for item in items:
        builder.add_item(item.long() if impl != "mmap" else item)
    builder.finalize(prefix + ".idx")


def write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def summarize(settings: dict, chosen: dict, src_tgt, tgt_dict, decoded: int, decode_seconds: float,
              teacher: list, data: str, start: int = 0) -> dict:
    """The summary of sentences [start, start + n) from their per-sentence choices
    (:func:`fairseq_kd.generation.select_targets`): of a whole split it is
    ``distill.<split>.json`` (one process, or the concatenated parts of all shards:
    the same numbers), of a shard's range the command's summary."""
    import sacrebleu

    n = len(chosen["targets"])
    post = settings["remove_bpe"] if settings["remove_bpe"] != "none" else None
    hyp_texts = [tgt_dict.string(t, post) for t in chosen["targets"]]
    ref_texts = [tgt_dict.string(src_tgt.tgt[i], post) for i in range(start, start + n)]
    kept_reference = {"too_long": list(chosen["too_long"]), "empty": list(chosen["empty"])}
    return {
        "subset": settings["subset"], "source_lang": settings["source_lang"], "target_lang": settings["target_lang"],
        "sentences": n, "range": [start, start + n], "tokens": int(sum(len(t) for t in chosen["targets"])),
        "decoded": decoded, "kept_reference": sum(len(v) for v in kept_reference.values()),
        "kept_reference_ids": kept_reference,
        "select": settings["select"], "nbest": settings["nbest"], "beam": settings["beam"],
        "lenpen": settings["lenpen"],
        "seq_inter_not_top": sum(1 for r in chosen["rank"] if r > 0),
        "mean_sentence_bleu": sum(chosen["bleu"]) / max(n, 1),
        "corpus_bleu": sacrebleu.corpus_bleu(hyp_texts, [ref_texts]).score if n else 0.0,
        "bleu_post_process": settings["remove_bpe"],
        "sentences_per_second": decoded / max(decode_seconds, 1e-9),
        "decode_seconds": decode_seconds,
        "teacher": teacher,
        "data": data,
        # What the corpus belongs to, checked by translation_kd --distilled-data: the source
        # split's sentence lengths on both sides (its sentences, in order) and both dictionaries.
        "source_sizes_checksum": settings["sizes_checksum"],
        "target_sizes_checksum": settings["tgt_sizes_checksum"],
        "source_dictionary_checksum": settings["dictionary_checksum"][settings["source_lang"]],
        "target_dictionary_checksum": settings["dictionary_checksum"][settings["target_lang"]],
    }


def write_corpus(out: str, data: str, prefix: str, settings: dict, src_tgt, src_dict, tgt_dict,
                 targets: Sequence[torch.Tensor], summary: dict, copy_splits: Sequence[str]) -> dict:
    """Write a whole distilled split into ``out`` atomically (the single-process run and
    the merge of shards both end here, so both give the same bytes).

    ``src_tgt`` has ``.src`` / ``.tgt`` (the split's indexed datasets), ``prefix``
    is the split's ``<data>/<split>.<pair>.``; ``summary`` gets ``copied_gold_splits``.
    """
    subset, src, tgt, impl = settings["subset"], settings["source_lang"], settings["target_lang"], settings["impl"]
    n = len(targets)
    # Write everything to a temporary folder on the same file system, then rename.
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f".distill-{subset}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        out_prefix = f"{subset}.{src}-{tgt}."
        copy_binarized(prefix, os.path.join(tmp, out_prefix), src)
        write_indexed(os.path.join(tmp, out_prefix + tgt), targets, impl, len(tgt_dict))
        write_lines(os.path.join(tmp, f"{subset}.{src}"), [src_dict.string(src_tgt.src[i]) for i in range(n)])
        write_lines(os.path.join(tmp, f"{subset}.{tgt}"), [tgt_dict.string(t) for t in targets])
        write_lines(os.path.join(tmp, f"{subset}.{tgt}.gold"), [tgt_dict.string(src_tgt.tgt[i]) for i in range(n)])
        for lang in (src, tgt):
            shutil.copyfile(os.path.join(data, f"dict.{lang}.txt"), os.path.join(tmp, f"dict.{lang}.txt"))
        copied = []
        for split in copy_splits:
            if split == subset or os.path.exists(os.path.join(out, f"{split}.{src}-{tgt}.{src}.idx")):
                continue  # never overwrite a split already there (it may be distilled)
            try:
                gold_prefix, _ = split_prefix(data, split, src, tgt)
            except FileNotFoundError:
                continue
            for lang in (src, tgt):
                copy_binarized(gold_prefix, os.path.join(tmp, f"{split}.{src}-{tgt}."), lang)
            copied.append(split)
        summary["copied_gold_splits"] = copied
        meta = summary_name(subset)
        with open(os.path.join(tmp, meta), "w") as f:
            json.dump(summary, f, indent=2)
        # The metadata goes first and comes back last: a run killed while renaming
        # leaves a split without its distill.<split>.json, never a stale one.
        if os.path.exists(os.path.join(out, meta)):
            os.remove(os.path.join(out, meta))
        for name in sorted(os.listdir(tmp)):
            if name != meta:
                os.replace(os.path.join(tmp, name), os.path.join(out, name))
        os.replace(os.path.join(tmp, meta), os.path.join(out, meta))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


# -------------------------------------------------------------------- parts
def write_part(out: str, num_shards: int, shard_id: int, start: int, end: int, settings: dict, chosen: dict,
               tgt_dict, meta: dict) -> str:
    """Write the part of shard ``shard_id`` of ``num_shards`` (sentences [start, end) of
    ``settings["subset"]``, the corpus ``out``) in the layout of :mod:`.parts`; returns its folder.

    The part holds ``targets.{bin,idx}``, ``<subset>.<tgt>`` (their text) and
    ``header.json``: ``settings``, ``meta`` (timings, teacher, data) and the
    per-sentence choices of ``chosen`` the merged summary needs. A part of a killed
    run is started afresh.
    """
    target = output(out, settings["subset"])
    work, final = parts.work_path(target, num_shards, shard_id), parts.part_path(target, num_shards, shard_id)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        write_indexed(os.path.join(work, "targets"), chosen["targets"], settings["impl"], len(tgt_dict))
        write_lines(os.path.join(work, f"{settings['subset']}.{settings['target_lang']}"),
                    [tgt_dict.string(t) for t in chosen["targets"]])
        header = dict(settings, **meta, kind=KIND, num_shards=num_shards, shard_id=shard_id,
                      sentence_range=[start, end], rank=chosen["rank"], sentence_bleu=chosen["bleu"],
                      kept_reference_ids={"too_long": chosen["too_long"], "empty": chosen["empty"]})
        with atomic_open(os.path.join(work, parts.HEADER), fsync=True) as f:  # last: the part is whole
            json.dump(header, f, indent=1)
        parts.publish(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


class Split:
    """The source and reference targets of a binarized split (``.src`` / ``.tgt``), read without a task."""

    def __init__(self, prefix: str, src: str, tgt: str, src_dict, tgt_dict, impl: str):
        from fairseq.data import data_utils

        self.src = data_utils.load_indexed_dataset(prefix + src, src_dict, impl)
        self.tgt = data_utils.load_indexed_dataset(prefix + tgt, tgt_dict, impl)
        if self.src is None or self.tgt is None:
            raise MissingFileError(f"{prefix}{{{src},{tgt}}}.{{bin,idx}} not found")


def merge_parts(out: str, subset: str = "train", data: Optional[str] = None, remove_parts: bool = False) -> dict:
    """Join the parts of ``OUT/<subset>.parts`` into the distilled split, as one process writes it.

    Checks first (and writes nothing when any check fails): every part has the
    same settings, teacher and dictionary/split checksums, and the ranges cover
    the split exactly once (:func:`fairseq_kd.data.parts.check_parts`). The source
    and gold text come from DATA (default: the data directory the parts recorded),
    which must be the same split. Returns the split's summary with ``parts``.
    """
    from fairseq.data import Dictionary, data_utils

    from .array_store import dictionary_checksum, sizes_checksum

    found = parts.read_parts(output(out, subset), KIND)
    settings = parts.check_parts(found, PART_SETTINGS)
    found.sort(key=lambda p: p["sentence_range"])
    src, tgt, impl = settings["source_lang"], settings["target_lang"], settings["impl"]
    data = data or found[0]["data"]
    prefix, _ = split_prefix(data, subset, src, tgt)
    dicts = {lang: Dictionary.load(os.path.join(data, f"dict.{lang}.txt")) for lang in (src, tgt)}
    for lang, d in dicts.items():
        if dictionary_checksum(d) != settings["dictionary_checksum"][lang]:
            raise UsageError(f"{data}/dict.{lang}.txt is not the dictionary the parts were made with")
    check_dictionaries(out, data, (src, tgt))
    split = Split(prefix, src, tgt, dicts[src], dicts[tgt], impl)
    if len(split.src) != settings["sentences"] or sizes_checksum(split.src.sizes) != settings["sizes_checksum"]:
        raise UsageError(f"{prefix}{src} is not the split the parts were made from (other sentences or lengths)")

    chosen = {"targets": [], "rank": [], "bleu": [], "too_long": [], "empty": []}
    for part in found:
        targets = data_utils.load_indexed_dataset(os.path.join(part["path"], "targets"), dicts[tgt], impl)
        start, end = part["sentence_range"]
        if targets is None or len(targets) != end - start:
            raise UsageError(f"{part['path']}: targets.{{bin,idx}} missing or not {end - start} sentences")
        chosen["targets"] += [targets[i] for i in range(len(targets))]
        chosen["rank"] += part["rank"]
        chosen["bleu"] += part["sentence_bleu"]
        for reason in ("too_long", "empty"):
            chosen[reason] += part["kept_reference_ids"][reason]
    summary = summarize(settings, chosen, split, dicts[tgt], sum(p["decoded"] for p in found),
                        sum(p["decode_seconds"] for p in found), found[0]["teacher"], found[0]["data"])
    write_corpus(out, data, prefix, settings, split, dicts[src], dicts[tgt], chosen["targets"], summary,
                 found[0]["copy_splits"])
    if remove_parts:
        shutil.rmtree(parts.parts_dir(output(out, subset)))
    summary["parts"] = len(found)
    return summary


# ------------------------------------------------------------------ loading
def check_summary(summary_path: str, split: str, dataset, src_dict, tgt_dict, fix: str) -> None:
    """Raise ValueError unless the distilled corpus described by ``summary_path``
    (``distill.<split>.json``) was made from ``dataset`` (the same sentences in the
    same order: source and target sizes checksums) with ``src_dict`` / ``tgt_dict``;
    ``fix`` ends the message (how to remake the corpus)."""
    from .array_store import dictionary_checksum, sizes_checksum

    with open(summary_path) as f:
        meta: Dict[str, Any] = json.load(f)
    other_split = "(another, reordered or refiltered split)"
    made = {  # summary field: (how the corpus differs, the value here)
        "source_sizes_checksum": (f"from other source sentences than the data's {other_split}",
                                  lambda: sizes_checksum(dataset.src_sizes)),
        "target_sizes_checksum": (f"from other target sentences than the data's {other_split}",
                                  lambda: sizes_checksum(dataset.tgt_sizes)),
        "source_dictionary_checksum": ("with another source dictionary than the data's",
                                       lambda: dictionary_checksum(src_dict)),
        "target_dictionary_checksum": ("with another target dictionary than the data's",
                                       lambda: dictionary_checksum(tgt_dict)),
    }
    missing = [key for key in made if key not in meta]
    if missing:
        raise UsageError(
            f"{summary_path} was written by an older fairseq-kd-distill-corpus (no {', '.join(missing)}), "
            f"so the distilled {split} split cannot be checked against the data: {fix}"
        )
    for key, (how, actual) in made.items():
        here = actual()
        if meta[key] != here:
            raise UsageError(
                f"the distilled {split} split was made {how}: {key} is {meta[key][:16]} in "
                f"{summary_path}, {here[:16]} here; {fix}"
            )
