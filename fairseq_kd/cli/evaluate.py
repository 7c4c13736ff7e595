"""``fairseq-kd-evaluate``: quality and speed of a (distilled) student on a test split.

Decodes a binarized split with a fairseq checkpoint (an autoregressive model
with beam search, or a non-autoregressive one of ``translation_lev``:
Mask-Predict's ``cmlm_transformer``, the Levenshtein Transformer, with
iterative refinement), restores the original sentence order, removes BPE,
detokenizes (Moses) and scores against the references:

- MT: sacreBLEU (corpus BLEU, 13a) and chrF, on detokenized text;
- summarization: ROUGE-1/2/L F1 (``rouge-score``, Porter stemming), x 100;

and measures speed the way the Mask-Predict and Levenshtein papers compare
AT and NAT decoding:

- latency: mean milliseconds per sentence decoding one sentence at a time
  (batch 1) over the first ``--latency-sentences`` sentences, after a warm-up;
- throughput: sentences (and target tokens) per second decoding the whole
  split in batches of ``--max-tokens``.

    fairseq-kd-evaluate DATA --path student.pt --gen-subset test --beam 5 \
        --reference raw/test.en                        # AT, beam 5
    fairseq-kd-evaluate DATA --path cmlm.pt --iter-decode-max-iter 9 \
        --iter-decode-force-max-iter --iter-decode-with-beam 5  # NAT, 10 iterations

For ``translation_lev`` models ``--iter-decode-max-iter N`` runs N + 1 decoder
passes (fairseq's convention: Mask-Predict's T = 10 is N = 9); without
``--iter-decode-force-max-iter`` decoding stops early when the output stops
changing. References are ``--reference FILE`` (raw, detokenized text, one line
per sentence: the honest comparison) or else the split's own targets, BPE
removed and detokenized the same way as the hypotheses.
"""
import argparse
import json
import logging
import os
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch

from ..data.atomic import atomic_open
from ..errors import MissingFileError
from ..generation import add_generation_args, decode, generation_config
from ..teacher import load_teacher
from ._common import add_device_arguments, device_and_dtype, progress

logger = logging.getLogger("fairseq_kd.cli.evaluate")

METRICS = ("bleu", "chrf", "rouge")


# ---------------------------------------------------------------- scoring
def detokenizer(kind: str, lang: str):
    """A function str -> str undoing ``kind`` tokenization ("moses" or "none")."""
    if kind == "none":
        return lambda s: s
    if kind == "moses":
        from sacremoses import MosesDetokenizer

        detok = MosesDetokenizer(lang=lang)
        return lambda s: detok.detokenize(s.split())
    raise ValueError(f"unknown --tokenizer {kind!r}")


def score(hypotheses: Sequence[str], references: Sequence[str], metrics: Sequence[str]) -> Dict[str, float]:
    """Corpus scores (0-100): bleu and chrf by sacreBLEU; rouge1/2/L mean F1 by rouge-score."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    out: Dict[str, float] = {}
    if "bleu" in metrics or "chrf" in metrics:
        from sacrebleu.metrics import BLEU, CHRF

        for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
            if name in metrics:
                out[name] = metric.corpus_score(list(hypotheses), [list(references)]).score
                out[f"{name}_signature"] = str(metric.get_signature())
    if "rouge" in metrics:
        from rouge_score import rouge_scorer

        keys = ("rouge1", "rouge2", "rougeL")
        scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
        totals = dict.fromkeys(keys, 0.0)
        for hyp, ref in zip(hypotheses, references):
            result = scorer.score(ref, hyp)  # (target, prediction)
            for k in keys:
                totals[k] += result[k].fmeasure
        for k in keys:
            out[k] = 100.0 * totals[k] / max(len(hypotheses), 1)
    return out


# ------------------------------------------------------------------ speed
def _sync(use_cuda: bool) -> None:
    if use_cuda:
        torch.cuda.synchronize()


def measure_latency(task, models, dataset, generator, use_cuda, n_sentences: int, warmup: int = 3) -> dict:
    """Milliseconds per sentence at batch size 1 over the first n sentences (ids 0..n-1)."""
    from fairseq import utils

    n = min(n_sentences, len(dataset))
    ids = list(range(n))
    times: List[float] = []
    with torch.no_grad():
        for k, sid in enumerate(ids[:warmup] + ids):
            sample = dataset.collater([dataset[sid]])
            if use_cuda:
                sample = utils.move_to_cuda(sample)
            _sync(use_cuda)
            start = time.perf_counter()
            task.inference_step(generator, models, sample)
            _sync(use_cuda)
            if k >= min(warmup, n):
                times.append(time.perf_counter() - start)
    if not times:
        return {"sentences": 0}
    return {
        "sentences": len(times),
        "mean_ms": 1000.0 * statistics.fmean(times),
        "median_ms": 1000.0 * statistics.median(times),
    }


# -------------------------------------------------------------------- main
def run(args) -> dict:
    """Decode, score and time the split; returns the summary (``scores.json``)."""
    from ._common import check_minimums, input_file

    check_minimums(args, {"beam": 1, "max_tokens": 1, "batch_size": 1, "latency_sentences": 0,
                          "iter_decode_max_iter": 0, "iter_decode_with_beam": 1})
    if not os.path.isdir(args.data):
        raise MissingFileError(f"data directory not found: {args.data}")
    metrics = [m for m in args.metrics]
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r} (choose from {', '.join(METRICS)})")
    device, dtype = device_and_dtype(args)
    use_cuda = device.type == "cuda"
    references_raw = None
    if args.reference:
        with open(input_file(args.reference, "--reference file"), encoding="utf-8") as f:
            references_raw = [line.rstrip("\n") for line in f]

    # the model under test, frozen and loaded as a teacher is (dictionaries checked against DATA)
    loaded = load_teacher(args.path, data=args.data, device=device, dtype=dtype, what="checkpoint", generation=True)
    models, task = loaded.models, loaded.task
    task.load_dataset(args.gen_subset)
    dataset = task.dataset(args.gen_subset)
    n = len(dataset)
    if references_raw is not None and len(references_raw) != n:
        raise ValueError(f"--reference {args.reference} has {len(references_raw)} lines, "
                         f"the {args.gen_subset} split has {n} sentences")
    if references_raw is None and dataset.tgt is None:
        raise ValueError(f"the {args.gen_subset} split has no targets: give --reference FILE")
    generator = task.build_generator(models, generation_config(args))

    # Latency first: its warm-up also warms up the throughput run.
    latency = None
    if args.latency_sentences > 0:
        latency = measure_latency(task, models, dataset, generator, use_cuda, args.latency_sentences)
    # Throughput: the whole split in large batches (the quality numbers come from this run).
    _sync(use_cuda)
    start = time.perf_counter()
    results = decode(task, models, dataset, generator, args.max_tokens, args.batch_size, use_cuda, 1,
                     desc=f"evaluate {args.gen_subset}", progress=progress)
    _sync(use_cuda)
    seconds = time.perf_counter() - start
    missing = [sid for sid in range(n) if sid not in results]
    if missing:
        raise ValueError(f"{len(missing)} sentences were not decoded (longer than the model's max "
                         f"positions), first ids {missing[:5]}: the scores would not cover the split")

    tgt_dict = task.target_dictionary
    lang = args.detok_lang or task.cfg.target_lang
    detok = detokenizer(args.tokenizer, lang)
    post = args.remove_bpe if args.remove_bpe != "none" else None
    hypotheses = [detok(tgt_dict.string(results[sid][0][0], post)) for sid in range(n)]
    if references_raw is None:
        references = [detok(tgt_dict.string(dataset.tgt[sid], post)) for sid in range(n)]
    else:
        references = references_raw
    scores = score(hypotheses, references, metrics)
    out_tokens = sum(len(results[sid][0][0]) for sid in range(n))

    summary = {
        "gen_subset": args.gen_subset, "sentences": n, "path": args.path, "task": task.__class__.__name__,
        "generator": generator.__class__.__name__, "beam": args.beam,
        "iter_decode_max_iter": args.iter_decode_max_iter,
        "iter_decode_force_max_iter": args.iter_decode_force_max_iter,
        "iter_decode_with_beam": args.iter_decode_with_beam,
        "reference": args.reference or "dataset targets", "tokenizer": args.tokenizer,
        "remove_bpe": args.remove_bpe, "device": "cuda" if use_cuda else "cpu", "fp16": args.fp16,
        "bf16": args.bf16,
        **scores,
        "throughput": {
            "max_tokens": args.max_tokens, "batch_size": args.batch_size, "seconds": seconds,
            "sentences_per_second": n / max(seconds, 1e-9),
            "target_tokens_per_second": out_tokens / max(seconds, 1e-9),
        },
    }
    if latency is not None:
        summary["latency"] = latency
    if args.results_path:
        os.makedirs(args.results_path, exist_ok=True)
        for name, lines in (("hypotheses.txt", hypotheses), ("references.txt", references)):
            with atomic_open(os.path.join(args.results_path, name), encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
        with atomic_open(os.path.join(args.results_path, "scores.json")) as f:  # last: the results are whole
            json.dump(summary, f, indent=2)
        logger.info(f"hypotheses, references and scores in {args.results_path}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fairseq-kd-evaluate",
        description="Decode a split, detokenize, and report sacreBLEU/chrF (MT) or ROUGE (summarization), "
        "latency at batch 1 and throughput at a large batch (AT beam search or NAT iterative refinement).",
    )
    p.add_argument("data", help="fairseq data directory (binarized)")
    p.add_argument("--path", required=True, help="checkpoint(s), colon-separated for an ensemble")
    p.add_argument("--gen-subset", default="test", help="split to decode (default: test)")
    p.add_argument("--metrics", nargs="+", default=["bleu", "chrf"],
                   help=f"any of {', '.join(METRICS)} (default: bleu chrf; rouge for summarization)")
    p.add_argument("--reference", help="raw (detokenized) reference text, one line per sentence; "
                   "default: the split's targets, BPE removed and detokenized")
    p.add_argument("--remove-bpe", default="subword_nmt", choices=("subword_nmt", "sentencepiece", "none"),
                   help="BPE removed from hypotheses and dataset references (default: subword_nmt)")
    p.add_argument("--tokenizer", default="moses", choices=("moses", "none"),
                   help="tokenization undone before scoring (default: moses)")
    p.add_argument("--detok-lang", help="language of the Moses detokenizer (default: the target language)")
    add_generation_args(p, ("beam", "lenpen", "max_len_a", "max_len_b", "iter_decode_max_iter",
                            "iter_decode_force_max_iter", "iter_decode_with_beam"), defaults={"lenpen": 1.0})
    p.add_argument("--max-tokens", type=int, default=8000, help="tokens per batch for throughput (default: 8000)")
    p.add_argument("--batch-size", type=int, default=None, help="sentences per batch (default: no limit)")
    p.add_argument("--latency-sentences", type=int, default=100,
                   help="sentences decoded one at a time for latency (default: 100; 0 skips)")
    p.add_argument("--results-path", help="write hypotheses.txt, references.txt and scores.json here")
    add_device_arguments(p, what="the model")
    return p


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    from ._common import record_run, run_command

    args, summary = run_command(build_parser(), run, argv)
    if args.results_path:
        record_run(args.results_path, args)
    quality = " ".join(
        f"{name} {summary[key]:.2f}"
        for key, name in (("bleu", "BLEU"), ("chrf", "chrF"), ("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"),
                          ("rougeL", "ROUGE-L"))
        if key in summary
    )
    speed = f"throughput {summary['throughput']['sentences_per_second']:.1f} sentences/s"
    if "latency" in summary and summary["latency"].get("sentences"):
        speed = f"latency {summary['latency']['mean_ms']:.1f} ms/sentence (batch 1) | " + speed
    print(f"evaluate | {summary['gen_subset']}: {summary['sentences']} sentences | {quality} | {speed} "
          f"| {summary['generator']} on {summary['device']}")


if __name__ == "__main__":
    cli_main()
