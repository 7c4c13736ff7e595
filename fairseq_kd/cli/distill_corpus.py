"""``fairseq-kd-distill-corpus``: decode a split with a teacher into a distilled corpus.

Sequence-level knowledge distillation (Kim & Rush 2016, "Sequence-Level
Knowledge Distillation"): an autoregressive teacher (or an ensemble) decodes
the source side of a binarized split with beam search, and a student is then
trained on the teacher's outputs. This is the standard way to build the
training data of non-autoregressive students (Gu et al. 2018; Mask-Predict,
Ghazvininejad et al. 2019; the Levenshtein Transformer, Gu et al. 2019).

    fairseq-kd-distill-corpus DATA --path teacher.pt[:other.pt] --subset train \
        --beam 5 --out DIR [--nbest K --select {top,seq-inter}] [--max-tokens N] [--fp16]

What it guarantees, unlike ``fairseq-generate | grep ^H``:

- Original sentence order: hypotheses are placed by ``sample["id"]``, not in
  the length-sorted order batches come in.
- Every sentence has an output. A sentence the teacher cannot decode (longer
  than the models' max positions, or an empty hypothesis) keeps its reference
  target; the summary counts them and ``distill.<split>.json`` lists their ids.
- Correct language suffixes: ``DIR/<split>.<src>-<tgt>.<src>`` is the original
  source (copied byte for byte), ``DIR/<split>.<src>-<tgt>.<tgt>`` the
  teacher's output, both binarized with the original dictionaries (copied as
  ``dict.<lang>.txt``), so DIR is a data directory for ``fairseq-train``
  (``--task translation``, ``translation_lev``) and for
  ``--task translation_kd --distilled-data DIR``. ``--copy-splits`` copies the
  gold valid/test splits so that validation works out of the box.
- Text beside the binary files: ``<split>.<src>``, ``<split>.<tgt>`` (teacher)
  and ``<split>.<tgt>.gold``, one sentence a line, in the dictionary's
  (BPE-level) tokens, ready for ``fairseq-preprocess`` or ``fairseq-kd-data-stats``.
- Nothing half-written: everything goes to a temporary folder inside DIR and
  is moved into place (``os.replace``) only when the split is complete.
- What it belongs to: ``distill.<split>.json`` records the split's source and
  target sizes checksums and both dictionaries' checksums;
  ``--task translation_kd --distilled-data DIR`` refuses a corpus made from
  another (or reordered, refiltered) split or with other dictionaries.

``--select seq-inter`` is Kim & Rush's Sequence-level Interpolation: of the
teacher's K best (``--nbest K``), keep the hypothesis with the highest
sentence BLEU against the reference. Sentence BLEU (here, in the summary and
in Seq-Inter) is sacreBLEU's ``sentence_bleu`` defaults (13a tokenization,
exponential smoothing, effective order) on the dictionary strings with BPE
removed (``--remove-bpe``, default ``subword_nmt`` i.e. "@@ " joined;
``sentencepiece`` for SentencePiece), the same for hypothesis and reference;
text is not detokenized (training text is tokenized, and only the ranking of
hypotheses matters).

Sharding: with ``--num-shards N --shard-id I`` (or under ``torchrun`` /
``srun``, from RANK / WORLD_SIZE or SLURM_PROCID / SLURM_NTASKS, the GPU from
the local rank) a process decodes only shard I, a contiguous range of sentence
ids balanced by source tokens (:mod:`fairseq_kd.data.shards`), and writes it
atomically to ``DIR/<split>.parts/part-0000I-of-0000N/`` with its range,
settings, teacher and dictionary checksums in ``meta.json``. A shard that dies
is rerun alone. ``fairseq-kd-merge-shards DIR --subset <split>`` checks the
parts cover the split exactly once with the same settings and writes the same
files (byte for byte; only the timing fields of the JSON differ) as one
process would.
"""
import argparse
import json
import logging
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

logger = logging.getLogger("fairseq_kd.cli.distill_corpus")

SELECT = ("top", "seq-inter")


# ---------------------------------------------------------------- selection
def sentence_bleu_scorer():
    """A function (hyp, ref) -> sacreBLEU sentence BLEU (0-100), metric object built once."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(effective_order=True)  # sentence_bleu's defaults: 13a, exp smoothing
    return lambda hyp, ref: metric.sentence_score(hyp, [ref]).score


def select_seq_inter(hypotheses: Sequence[str], reference: str, bleu=None) -> Tuple[int, List[float]]:
    """Kim & Rush (2016) Sequence-level Interpolation: the K-best entry closest to the reference.

    Args:
        hypotheses: the teacher's K best, best model score first (post-processed strings).
        reference: the gold target, post-processed the same way.
        bleu: (hyp, ref) -> score; default sacreBLEU sentence BLEU.

    Returns:
        (index of the hypothesis with the highest sentence BLEU, all K scores).
        Ties go to the earlier (higher model score) hypothesis.
    """
    if not hypotheses:
        raise ValueError("select_seq_inter needs at least one hypothesis")
    bleu = bleu or sentence_bleu_scorer()
    scores = [bleu(h, reference) for h in hypotheses]
    best = max(range(len(scores)), key=lambda k: (scores[k], -k))
    return best, scores


# ------------------------------------------------------------------- paths
def split_prefix(data: str, split: str, src: str, tgt: str) -> Tuple[str, str]:
    """(prefix for ``<prefix><lang>.{bin,idx}``, "src-tgt" or "tgt-src") as fairseq's
    translation task finds it; raises FileNotFoundError naming both candidates."""
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = os.path.join(data, f"{split}.{pair}.")
        if os.path.exists(prefix + src + ".idx") and os.path.exists(prefix + src + ".bin"):
            return prefix, pair
    raise FileNotFoundError(
        f"no binarized {split} split in {data}: looked for {split}.{src}-{tgt}.{src}.{{bin,idx}} "
        f"and {split}.{tgt}-{src}.{src}.{{bin,idx}}"
    )


def copy_binarized(prefix: str, dest_prefix: str, lang: str) -> None:
    for ext in ("bin", "idx"):
        shutil.copyfile(f"{prefix}{lang}.{ext}", f"{dest_prefix}{lang}.{ext}")


# ------------------------------------------------------------------ teacher
def load_ensemble(data: str, paths: str, use_cuda: bool, fp16: bool, overrides: Optional[dict] = None,
                  what: str = "teacher checkpoint"):
    """(models, task) from fairseq checkpoints ``a.pt[:b.pt]`` with the task pointed at DATA.

    Options a translation_kd teacher was trained with (its own teacher, soft
    labels, distilled data) are switched off: decoding needs none of them.
    """
    import fairseq_kd  # noqa: F401  registers the plugin (translation_kd teachers, safe loading)
    from fairseq import checkpoint_utils

    from ..teacher import check_files_exist, split_paths

    files = split_paths(paths)
    if not files:
        raise ValueError("--path is empty")
    check_files_exist(files, what)
    arg_overrides = {"data": data, "teacher_path": None, "soft_labels": None, "distilled_data": None}
    arg_overrides.update(overrides or {})
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(files, arg_overrides=arg_overrides)
    for model in models:
        model.eval()
        model.requires_grad_(False)
        if fp16:
            model.half()
        if use_cuda:
            model.cuda()
        model.prepare_for_inference_(_cfg)
    return models, task


def generation_args(args) -> argparse.Namespace:
    """The fields ``task.build_generator`` reads, from this command's options."""
    return argparse.Namespace(
        beam=args.beam, nbest=getattr(args, "nbest", 1), max_len_a=args.max_len_a, max_len_b=args.max_len_b,
        min_len=1, lenpen=args.lenpen, unkpen=0, temperature=1.0, no_repeat_ngram_size=0,
        # iterative-refinement (NAT) generators read these; AR teachers ignore them
        iter_decode_max_iter=getattr(args, "iter_decode_max_iter", 10),
        iter_decode_force_max_iter=getattr(args, "iter_decode_force_max_iter", False),
        iter_decode_eos_penalty=0.0, iter_decode_with_beam=getattr(args, "iter_decode_with_beam", 1),
        iter_decode_with_external_reranker=False,
        retain_iter_history=False, retain_dropout=False, print_alignment=False,
    )


def decode(task, models, dataset, generator, max_tokens, batch_size, use_cuda, nbest, desc="decode"):
    """Decode every sentence ``dataset`` lets through; {sentence id: [(tokens, score)] * <= nbest}.

    tokens are CPU int tensors ending with EOS. Sentences longer than the
    models' max positions are skipped here (fairseq's ``ignore_invalid_inputs``);
    the caller finds them as missing ids.
    """
    from fairseq import utils

    from ._common import progress

    max_positions = utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models])
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size,
        max_positions=max_positions, ignore_invalid_inputs=True,
        # a multiple > 1 would drop the last batch's remainder (fairseq issue #5036)
        required_batch_size_multiple=1, seed=1, num_shards=1, shard_id=0, num_workers=0,
    ).next_epoch_itr(shuffle=False)
    results: Dict[int, List[Tuple[torch.Tensor, float]]] = {}
    for sample in progress(itr, total=len(itr), desc=desc, unit="batch"):
        if not sample or "net_input" not in sample:
            continue
        if use_cuda:
            sample = utils.move_to_cuda(sample)
        hypos = task.inference_step(generator, models, sample)
        for i, sid in enumerate(sample["id"].tolist()):
            results[sid] = [(h["tokens"].int().cpu(), float(h["score"])) for h in hypos[i][:nbest]]
    return results


# ----------------------------------------------------------------- writing
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


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


SETTINGS = ("beam", "nbest", "select", "lenpen", "max_len_a", "max_len_b", "remove_bpe")
PART_KIND = "distill_corpus_part"


def range_dataset(dataset, start: int, end: int):
    """``dataset`` restricted to sentence ids [start, end) for batching: ids stay global
    (sample["id"] is the id in the whole split) and batches are formed as the
    whole split's order has them (the inner dataset's sort, range kept)."""
    import numpy as np
    from fairseq.data import BaseWrapperDataset

    class RangeDataset(BaseWrapperDataset):
        def ordered_indices(self):
            order = self.dataset.ordered_indices()
            return order[(order >= start) & (order < end)]

    return RangeDataset(dataset)


def select_targets(src_tgt, results, ids, tgt_dict, select: str, post: Optional[str], bleu) -> dict:
    """Per sentence of ``ids`` (in order): the distilled target and why.

    ``src_tgt`` has ``.tgt`` (reference token tensors by global id). Returns
    {"targets": [tensor], "rank": [n-best rank chosen, -1 = reference kept],
    "bleu": [sentence BLEU vs reference], "too_long": [ids], "empty": [ids]}.
    """
    out = {"targets": [], "rank": [], "bleu": [], "too_long": [], "empty": []}
    for sid in ids:
        ref = src_tgt.tgt[sid]
        ref_text = tgt_dict.string(ref, post)
        candidates = [(t, s) for t, s in results.get(sid, []) if t.numel() > 1]  # > 1: not only EOS
        if sid not in results:
            out["too_long"].append(sid)
        elif not candidates:
            out["empty"].append(sid)
        if not candidates:
            tokens, rank = ref.int(), -1
        elif select == "seq-inter" and len(candidates) > 1:
            rank, _ = select_seq_inter([tgt_dict.string(t, post) for t, _ in candidates], ref_text, bleu)
            tokens = candidates[rank][0]
        else:
            tokens, rank = candidates[0][0], 0
        out["targets"].append(tokens)
        out["rank"].append(rank)
        out["bleu"].append(bleu(tgt_dict.string(tokens, post), ref_text))
    return out


def summarize(settings: dict, chosen: dict, src_tgt, tgt_dict, decoded: int, decode_seconds: float,
              teacher: list, data: str) -> dict:
    """The ``distill.<split>.json`` summary of a whole split from its per-sentence choices
    (one process, or the concatenated parts of all shards: the same numbers)."""
    import sacrebleu

    n = len(chosen["targets"])
    post = settings["remove_bpe"] if settings["remove_bpe"] != "none" else None
    hyp_texts = [tgt_dict.string(t, post) for t in chosen["targets"]]
    ref_texts = [tgt_dict.string(src_tgt.tgt[i], post) for i in range(n)]
    kept_reference = {"too_long": list(chosen["too_long"]), "empty": list(chosen["empty"])}
    return {
        "subset": settings["subset"], "source_lang": settings["source_lang"], "target_lang": settings["target_lang"],
        "sentences": n, "range": [0, n], "tokens": int(sum(len(t) for t in chosen["targets"])),
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
        meta = f"distill.{subset}.json"
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


def parts_dir(out: str, subset: str) -> str:
    """Where the shards of ``subset`` write their parts: ``OUT/<subset>.parts``."""
    return os.path.join(out, f"{subset}.parts")


def write_part(out: str, shard, start: int, end: int, settings: dict, chosen: dict, tgt_dict,
               meta: dict) -> str:
    """Write shard ``shard``'s part (sentences [start, end)) atomically; returns its folder.

    The part holds ``targets.{bin,idx}`` (the distilled targets of its range, in
    id order), ``<split>.<tgt>`` (their text) and ``meta.json`` (range, shard,
    the settings every part must share, and the per-sentence choices the merged
    summary needs)."""
    from ..data.shards import part_name, replace_dir

    parent = parts_dir(out, settings["subset"])
    os.makedirs(parent, exist_ok=True)
    name = part_name(shard)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write_indexed(os.path.join(tmp, "targets"), chosen["targets"], settings["impl"], len(tgt_dict))
        write_lines(os.path.join(tmp, f"{settings['subset']}.{settings['target_lang']}"),
                    [tgt_dict.string(t) for t in chosen["targets"]])
        meta = dict(meta, kind=PART_KIND, shard=[shard.shard_id, shard.num_shards], range=[start, end],
                    settings=settings, rank=chosen["rank"], sentence_bleu=chosen["bleu"],
                    kept_reference_ids={"too_long": chosen["too_long"], "empty": chosen["empty"]})
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        replace_dir(tmp, os.path.join(parent, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(parent, name)


def distill(args) -> dict:
    """Run the whole command; returns the summary written to ``distill.<split>.json``
    (for one shard of several: the part's meta)."""
    from fairseq.data import indexed_dataset

    from ..data.array_store import dictionary_checksum, file_checksum, sizes_checksum
    from ..data.shards import shard_from_env, shard_range

    if args.nbest > args.beam:
        raise ValueError(f"--nbest {args.nbest} is larger than --beam {args.beam}")
    if args.select == "seq-inter" and args.nbest < 2:
        logger.warning("--select seq-inter with --nbest 1 keeps the top hypothesis; use --nbest K > 1")
    shard = shard_from_env(getattr(args, "num_shards", None), getattr(args, "shard_id", None))
    if not 0 <= shard.shard_id < shard.num_shards:
        raise ValueError(f"--shard-id must be in [0, {shard.num_shards}), got {shard.shard_id}")
    use_cuda = torch.cuda.is_available() and not args.cpu
    if args.fp16 and not use_cuda:
        raise ValueError("--fp16 needs a GPU (none found, or --cpu given)")
    if not os.path.isdir(args.data):
        raise FileNotFoundError(f"data directory not found: {args.data}")
    if use_cuda:
        torch.cuda.set_device(shard.local_rank % torch.cuda.device_count())  # one GPU per process of a node

    models, task = load_ensemble(args.data, args.path, use_cuda, args.fp16)
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    prefix, _pair = split_prefix(args.data, args.subset, src, tgt)
    if not (os.path.exists(prefix + tgt + ".idx") and os.path.exists(prefix + tgt + ".bin")):
        raise FileNotFoundError(f"{prefix}{tgt}.{{bin,idx}} not found: distillation needs the reference targets")
    impl = task.cfg.dataset_impl or indexed_dataset.infer_dataset_impl(prefix + src)
    if impl not in ("mmap", "lazy", "cached"):
        raise ValueError(f"{prefix}{src}: dataset format {impl!r} is not supported (binarize with fairseq-preprocess)")
    for lang in (src, tgt):
        original, existing = os.path.join(args.data, f"dict.{lang}.txt"), os.path.join(args.out, f"dict.{lang}.txt")
        if not os.path.isfile(original):
            raise FileNotFoundError(f"{original} not found")
        if os.path.exists(existing) and not _same_file(original, existing):
            raise ValueError(f"{existing} differs from {original}: --out holds a corpus made from other data")

    task.load_dataset(args.subset)
    dataset = task.dataset(args.subset)
    n = len(dataset)
    if dataset.tgt is None:
        raise ValueError(f"{args.subset} split of {args.data} has no targets")
    # Shards are balanced by source tokens: what beam search reads and (about) writes.
    start, end = shard_range(dataset.src_sizes, shard.num_shards, shard.shard_id)
    teacher = [{"path": p, "sha256": file_checksum(p)} for p in args.path.split(":") if p]
    settings = {
        "subset": args.subset, "source_lang": src, "target_lang": tgt, "impl": impl,
        **{k: getattr(args, k) for k in SETTINGS},
        "sentences": n, "sizes_checksum": sizes_checksum(dataset.src_sizes),
        "tgt_sizes_checksum": sizes_checksum(dataset.tgt_sizes),
        "dictionary_checksum": {src: dictionary_checksum(src_dict), tgt: dictionary_checksum(tgt_dict)},
        "teacher_sha256": [t["sha256"] for t in teacher],
    }

    generator = task.build_generator(models, generation_args(args))
    what = f"distill {args.subset}" + (f" shard {shard.shard_id}/{shard.num_shards}" if shard.num_shards > 1 else "")
    if shard.num_shards > 1:
        logger.info(f"{what}: sentences [{start}, {end}) of {n}")
    t0 = time.time()
    results = decode(task, models, dataset if (start, end) == (0, n) else range_dataset(dataset, start, end),
                     generator, args.max_tokens, args.batch_size, use_cuda, args.nbest, desc=what)
    decode_seconds = time.time() - t0

    post = args.remove_bpe if args.remove_bpe != "none" else None
    chosen = select_targets(dataset, results, range(start, end), tgt_dict, args.select, post, sentence_bleu_scorer())
    decoded = sum(1 for sid in results if start <= sid < end)
    if shard.num_shards > 1:
        meta = {"decoded": decoded, "decode_seconds": decode_seconds, "teacher": teacher, "data": args.data,
                "copy_splits": list(args.copy_splits), "tokens": int(sum(len(t) for t in chosen["targets"]))}
        path = write_part(args.out, shard, start, end, settings, chosen, tgt_dict, meta)
        with open(os.path.join(path, "meta.json")) as f:
            return json.load(f)
    summary = summarize(settings, chosen, dataset, tgt_dict, decoded, decode_seconds, teacher, args.data)
    return write_corpus(args.out, args.data, prefix, settings, dataset, src_dict, tgt_dict, chosen["targets"],
                        summary, args.copy_splits)


def read_parts(parent: str, kind: str, meta_name: str) -> List[dict]:
    """The finished parts in ``parent`` (``part-*`` folders holding ``meta_name`` of ``kind``),
    each meta with its ``name`` and ``path`` added; unfinished temporary folders are ignored."""
    parts = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not (name.startswith("part-") and os.path.isdir(path)) or ".old-" in name:
            continue
        meta_path = os.path.join(path, meta_name)
        if not os.path.exists(meta_path):
            raise ValueError(f"{path} is not a finished part ({meta_name} missing): rerun its shard")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("kind") != kind:
            raise ValueError(f"{path} holds a {meta.get('kind')!r} part, expected {kind!r}")
        parts.append(dict(meta, name=name, path=path))
    return parts


class _Split:
    """The source and reference targets of a binarized split, read without a task."""

    def __init__(self, prefix: str, src: str, tgt: str, src_dict, tgt_dict, impl: str):
        from fairseq.data import data_utils

        self.src = data_utils.load_indexed_dataset(prefix + src, src_dict, impl)
        self.tgt = data_utils.load_indexed_dataset(prefix + tgt, tgt_dict, impl)
        if self.src is None or self.tgt is None:
            raise FileNotFoundError(f"{prefix}{{{src},{tgt}}}.{{bin,idx}} not found")


def merge_parts(out: str, subset: str = "train", data: Optional[str] = None, remove_parts: bool = False) -> dict:
    """Join the parts of ``OUT/<subset>.parts`` into the distilled split, as one process writes it.

    Checks first (and writes nothing when any check fails): every part has the
    same settings, teacher and dictionary/split checksums, and the ranges cover
    the split exactly once. The source and gold text come from DATA (default:
    the data directory the parts recorded), which must be the same split.
    """
    from fairseq.data import Dictionary

    from ..data.array_store import dictionary_checksum, sizes_checksum
    from ..data.shards import check_parts

    parent = parts_dir(out, subset)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"no parts to merge: {parent} not found")
    parts = read_parts(parent, PART_KIND, "meta.json")
    if not parts:
        raise ValueError(f"no finished parts in {parent}")
    check_parts(parts, parts[0]["settings"]["sentences"])
    parts.sort(key=lambda p: p["range"])
    settings = parts[0]["settings"]
    src, tgt, impl = settings["source_lang"], settings["target_lang"], settings["impl"]
    data = data or parts[0]["data"]
    prefix, _ = split_prefix(data, subset, src, tgt)
    dicts = {lang: Dictionary.load(os.path.join(data, f"dict.{lang}.txt")) for lang in (src, tgt)}
    for lang, d in dicts.items():
        if dictionary_checksum(d) != settings["dictionary_checksum"][lang]:
            raise ValueError(f"{data}/dict.{lang}.txt is not the dictionary the parts were made with")
    for lang in (src, tgt):
        existing = os.path.join(out, f"dict.{lang}.txt")
        if os.path.exists(existing) and not _same_file(os.path.join(data, f"dict.{lang}.txt"), existing):
            raise ValueError(f"{existing} differs from {data}/dict.{lang}.txt: OUT holds a corpus made from other data")
    split = _Split(prefix, src, tgt, dicts[src], dicts[tgt], impl)
    if len(split.src) != settings["sentences"] or sizes_checksum(split.src.sizes) != settings["sizes_checksum"]:
        raise ValueError(f"{prefix}{src} is not the split the parts were made from (other sentences or lengths)")

    from fairseq.data import data_utils

    chosen = {"targets": [], "rank": [], "bleu": [], "too_long": [], "empty": []}
    for part in parts:
        targets = data_utils.load_indexed_dataset(os.path.join(part["path"], "targets"), dicts[tgt], impl)
        start, end = part["range"]
        if targets is None or len(targets) != end - start:
            raise ValueError(f"{part['path']}: targets.{{bin,idx}} missing or not {end - start} sentences")
        chosen["targets"] += [targets[i] for i in range(len(targets))]
        chosen["rank"] += part["rank"]
        chosen["bleu"] += part["sentence_bleu"]
        for reason in ("too_long", "empty"):
            chosen[reason] += part["kept_reference_ids"][reason]
    summary = summarize(settings, chosen, split, dicts[tgt], sum(p["decoded"] for p in parts),
                        sum(p["decode_seconds"] for p in parts), parts[0]["teacher"], parts[0]["data"])
    write_corpus(out, data, prefix, settings, split, dicts[src], dicts[tgt], chosen["targets"], summary,
                 parts[0]["copy_splits"])
    if remove_parts:
        shutil.rmtree(parent)
    summary["parts"] = len(parts)
    return summary


def build_parser() -> argparse.ArgumentParser:
    from ._common import add_shard_arguments

    p = argparse.ArgumentParser(
        prog="fairseq-kd-distill-corpus",
        description="Decode a binarized split with an autoregressive teacher (or ensemble) and write "
        "the distilled split (sequence-level KD, Kim & Rush 2016) in the original order.",
    )
    p.add_argument("data", help="fairseq data directory (binarized, with dict.<lang>.txt)")
    p.add_argument("--path", required=True, help="teacher checkpoint(s), colon-separated for an ensemble")
    p.add_argument("--subset", default="train", help="split to distill (default: train)")
    p.add_argument("--out", required=True, help="output data directory (created; other splits in it are kept)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default: 5)")
    p.add_argument("--nbest", type=int, default=1, help="hypotheses kept per sentence for --select (default: 1)")
    p.add_argument("--select", choices=SELECT, default="top",
                   help="top: the teacher's best hypothesis; seq-inter: of the n-best, the one with the "
                   "highest sentence BLEU against the reference (Kim & Rush 2016)")
    p.add_argument("--lenpen", type=float, default=1.0, help="length penalty of beam search (default: 1)")
    p.add_argument("--max-len-a", type=float, default=0,
                   help="max output length = a * source length + b (default a: 0)")
    p.add_argument("--max-len-b", type=int, default=200,
                   help="max output length = a * source length + b (default b: 200)")
    p.add_argument("--max-tokens", type=int, default=4000, help="source tokens per batch (default: 4000)")
    p.add_argument("--batch-size", type=int, default=None, help="sentences per batch (default: no limit)")
    p.add_argument("--remove-bpe", default="subword_nmt", choices=("subword_nmt", "sentencepiece", "none"),
                   help="BPE removed before sentence BLEU (Seq-Inter and the summary); default subword_nmt ('@@ ')")
    p.add_argument("--copy-splits", nargs="*", default=["valid", "test"],
                   help="gold splits copied unchanged from DATA when OUT lacks them, so OUT works as a "
                   "data directory for training with validation (default: valid test; none with no value)")
    p.add_argument("--fp16", action="store_true", help="decode in half precision (GPU only)")
    p.add_argument("--cpu", action="store_true", help="decode on the CPU even when a GPU is there")
    add_shard_arguments(p, "source tokens", "OUT/<subset>.parts/")
    return p


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    from ._common import record_run, run_command

    args, summary = run_command(build_parser(), distill, argv)
    if summary.get("kind") == PART_KIND:
        shard_id, num_shards = summary["shard"]
        start, end = summary["range"]
        part = os.path.join(parts_dir(args.out, args.subset), f"part-{shard_id:05d}-of-{num_shards:05d}")
        record_run(part, args, name="command.json")
        print(
            f"distill-corpus | {args.subset} shard {shard_id} of {num_shards}: sentences [{start}, {end}) of "
            f"{summary['settings']['sentences']}, {summary['tokens']} tokens, "
            f"{summary['decoded'] / max(summary['decode_seconds'], 1e-9):.1f} sentences/s -> {part} "
            f"(when all shards are done: fairseq-kd-merge-shards {args.out} --subset {args.subset})"
        )
        return
    record_run(args.out, args, name=f"command.distill.{args.subset}.json")
    kept = summary["kept_reference_ids"]
    print(
        f"distill-corpus | {summary['subset']}: {summary['sentences']} sentences, {summary['tokens']} tokens, "
        f"{summary['sentences_per_second']:.1f} sentences/s | kept reference: {summary['kept_reference']} "
        f"({len(kept['too_long'])} too long, {len(kept['empty'])} empty) | select {summary['select']} "
        f"(not top: {summary['seq_inter_not_top']}) | mean sentence BLEU {summary['mean_sentence_bleu']:.2f}, "
        f"corpus BLEU {summary['corpus_bleu']:.2f} vs reference | -> {args.out}"
    )


if __name__ == "__main__":
    cli_main()
