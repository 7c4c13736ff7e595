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
- A fairseq data directory: DIR holds the split binarized with the original
  dictionaries, the text beside it and ``distill.<split>.json``, which
  ``--task translation_kd --distilled-data DIR`` checks against the data it is
  used with (the format: :mod:`fairseq_kd.data.distilled_corpus`).
  ``--copy-splits`` copies the gold valid/test splits so that validation works
  out of the box.
- Nothing half-written: the split appears whole, or not at all.

``--select seq-inter`` is Kim & Rush's Sequence-level Interpolation: of the
teacher's K best (``--nbest K``), keep the hypothesis with the highest
sentence BLEU against the reference. Sentence BLEU (here, in the summary and
in Seq-Inter) is sacreBLEU's ``sentence_bleu`` defaults (13a tokenization,
exponential smoothing, effective order) on the dictionary strings with BPE
removed (``--remove-bpe``, default ``subword_nmt`` i.e. "@@ " joined;
``sentencepiece`` for SentencePiece), the same for hypothesis and reference;
text is not detokenized (training text is tokenized, and only the ranking of
hypotheses matters). Beam search and its options are fairseq's
(:mod:`fairseq_kd.generation`).

Sharding: with ``--num-shards N --shard-id I`` (or under ``torchrun`` /
``srun``, from RANK / WORLD_SIZE or SLURM_PROCID / SLURM_NTASKS, the GPU from
the local rank) a process decodes only shard I, a contiguous range of sentence
ids balanced by source tokens (:mod:`fairseq_kd.data.shards`), and writes it
as the part ``DIR/<split>.parts/part-0000I-of-0000N/`` (the layout of every
part: :mod:`fairseq_kd.data.parts`). A shard that dies is rerun alone.
``fairseq-kd-merge-shards DIR --subset <split>`` checks the parts cover the
split exactly once with the same settings and writes the same files (byte for
byte; only the timing fields of the JSON differ) as one process would.
"""
import argparse
import logging
import os
import time
from typing import Optional, Sequence

from ..data import distilled_corpus
from ..errors import MissingFileError
from ..generation import SELECT, add_generation_args, decode, generation_config, range_dataset, select_targets, \
    sentence_bleu_scorer

logger = logging.getLogger("fairseq_kd.cli.distill_corpus")


def run(args) -> dict:
    """Decode the split (or this process's shard of it) and write the distilled corpus
    (or the shard's part). Returns one summary, whichever was written: the numbers of
    the sentences decoded here (``range``; of a whole split, what
    ``distill.<split>.json`` holds) with ``num_shards``, ``shard_id`` and ``path``."""
    from fairseq.data import indexed_dataset

    from ..data.array_store import dictionary_checksum, file_checksum, sizes_checksum
    from ..data.shards import check_shard, shard_from_env, shard_range
    from ..teacher import load_teacher
    from ._common import check_minimums, device_and_dtype, progress

    check_minimums(args, {"beam": 1, "nbest": 1})
    if args.nbest > args.beam:
        raise ValueError(f"--nbest {args.nbest} is larger than --beam {args.beam}")
    if args.select == "seq-inter" and args.nbest < 2:
        logger.warning("--select seq-inter with --nbest 1 keeps the top hypothesis; use --nbest K > 1")
    shard = shard_from_env(args.num_shards, args.shard_id)
    check_shard(shard.num_shards, shard.shard_id)
    device, dtype = device_and_dtype(args, shard.local_rank)
    if not os.path.isdir(args.data):
        raise MissingFileError(f"data directory not found: {args.data}")

    teacher = load_teacher(args.path, data=args.data, device=device, dtype=dtype, generation=True)
    models, task = teacher.models, teacher.task
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    prefix, _pair = distilled_corpus.split_prefix(args.data, args.subset, src, tgt)
    if not (os.path.exists(prefix + tgt + ".idx") and os.path.exists(prefix + tgt + ".bin")):
        raise MissingFileError(f"{prefix}{tgt}.{{bin,idx}} not found: distillation needs the reference targets")
    impl = task.cfg.dataset_impl or indexed_dataset.infer_dataset_impl(prefix + src)
    if impl not in ("mmap", "lazy", "cached"):
        raise ValueError(f"{prefix}{src}: dataset format {impl!r} is not supported (binarize with fairseq-preprocess)")
    distilled_corpus.check_dictionaries(args.out, args.data, (src, tgt))

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
        **{k: getattr(args, k) for k in distilled_corpus.OPTIONS},
        "sentences": n, "sizes_checksum": sizes_checksum(dataset.src_sizes),
        "tgt_sizes_checksum": sizes_checksum(dataset.tgt_sizes),
        "dictionary_checksum": {src: dictionary_checksum(src_dict), tgt: dictionary_checksum(tgt_dict)},
        "teacher_sha256": [t["sha256"] for t in teacher],
    }

    generator = task.build_generator(models, generation_config(args))
    sharded = shard.num_shards > 1
    what = f"distill {args.subset}" + (f" shard {shard.shard_id}/{shard.num_shards}" if sharded else "")
    if sharded:
        logger.info(f"{what}: sentences [{start}, {end}) of {n}")
    t0 = time.time()
    results = decode(task, models, dataset if (start, end) == (0, n) else range_dataset(dataset, start, end),
                     generator, args.max_tokens, args.batch_size, device.type == "cuda", args.nbest, desc=what,
                     progress=progress)
    decode_seconds = time.time() - t0

    post = args.remove_bpe if args.remove_bpe != "none" else None
    bleu = sentence_bleu_scorer()
    chosen = select_targets(dataset, results, range(start, end), tgt_dict, args.select, post, bleu)
    decoded = sum(1 for sid in results if start <= sid < end)
    summary = distilled_corpus.summarize(settings, chosen, dataset, tgt_dict, decoded, decode_seconds, teacher,
                                         args.data, start=start)
    if sharded:
        meta = {"decoded": decoded, "decode_seconds": decode_seconds, "teacher": teacher, "data": args.data,
                "copy_splits": list(args.copy_splits), "tokens": summary["tokens"]}
        path = distilled_corpus.write_part(args.out, shard.num_shards, shard.shard_id, start, end, settings, chosen,
                                           tgt_dict, meta)
        summary["copied_gold_splits"] = []  # the merge copies them
    else:
        path = args.out
        distilled_corpus.write_corpus(args.out, args.data, prefix, settings, dataset, src_dict, tgt_dict,
                                      chosen["targets"], summary, args.copy_splits)
    return dict(summary, split_sentences=n, num_shards=shard.num_shards, shard_id=shard.shard_id, path=path)


def build_parser() -> argparse.ArgumentParser:
    from ._common import add_device_arguments, add_shard_arguments

    p = argparse.ArgumentParser(
        prog="fairseq-kd-distill-corpus",
        description="Decode a binarized split with an autoregressive teacher (or ensemble) and write "
        "the distilled split (sequence-level KD, Kim & Rush 2016) in the original order.",
    )
    p.add_argument("data", help="fairseq data directory (binarized, with dict.<lang>.txt)")
    p.add_argument("--path", required=True, help="teacher checkpoint(s), colon-separated for an ensemble")
    p.add_argument("--subset", default="train", help="split to distill (default: train)")
    p.add_argument("--out", required=True, help="output data directory (created; other splits in it are kept)")
    p.add_argument("--select", choices=SELECT, default="top",
                   help="top: the teacher's best hypothesis; seq-inter: of the --nbest best, the one with the "
                   "highest sentence BLEU against the reference (Kim & Rush 2016)")
    p.add_argument("--max-tokens", type=int, default=4000, help="source tokens per batch (default: 4000)")
    p.add_argument("--batch-size", type=int, default=None, help="sentences per batch (default: no limit)")
    p.add_argument("--remove-bpe", default="subword_nmt", choices=("subword_nmt", "sentencepiece", "none"),
                   help="BPE removed before sentence BLEU (Seq-Inter and the summary); default subword_nmt ('@@ ')")
    p.add_argument("--copy-splits", nargs="*", default=["valid", "test"],
                   help="gold splits copied unchanged from DATA when OUT lacks them, so OUT works as a "
                   "data directory for training with validation (default: valid test; none with no value)")
    # beam search only: an autoregressive teacher; lenpen stays 1.0 (a float in distill.<split>.json)
    add_generation_args(p, ("beam", "nbest", "lenpen", "max_len_a", "max_len_b"), defaults={"lenpen": 1.0})
    add_device_arguments(p)
    add_shard_arguments(p, "source tokens", "OUT/<subset>.parts/")
    return p


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    from ._common import record_run, run_command

    args, summary = run_command(build_parser(), run, argv)
    start, end = summary["range"]
    kept = summary["kept_reference_ids"]
    if summary["num_shards"] > 1:
        record_run(summary["path"], args, name="command.json")
        where = (f" shard {summary['shard_id']} of {summary['num_shards']}: sentences [{start}, {end}) of "
                 f"{summary['split_sentences']}")
        then = f" (when all shards are done: fairseq-kd-merge-shards {args.out} --subset {args.subset})"
    else:
        record_run(args.out, args, name=f"command.distill.{args.subset}.json")
        where, then = f": {summary['sentences']} sentences", ""
    print(
        f"distill-corpus | {summary['subset']}{where}, {summary['tokens']} tokens, "
        f"{summary['sentences_per_second']:.1f} sentences/s | kept reference: {summary['kept_reference']} "
        f"({len(kept['too_long'])} too long, {len(kept['empty'])} empty) | select {summary['select']} "
        f"(not top: {summary['seq_inter_not_top']}) | mean sentence BLEU {summary['mean_sentence_bleu']:.2f}, "
        f"corpus BLEU {summary['corpus_bleu']:.2f} vs reference | -> {summary['path']}{then}"
    )


if __name__ == "__main__":
    cli_main()
