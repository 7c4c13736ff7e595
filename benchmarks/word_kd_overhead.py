#!/usr/bin/env python
"""Online-teacher overhead of --criterion word_kd, and the cost of training from a store.

Trains the same student on the same data for a fixed number of updates with
``label_smoothed_cross_entropy``, with ``word_kd`` from an online teacher
(``--teacher``) and/or with ``word_kd`` from a soft-label store of the training
split (``--soft-labels``), alternating the runs in one invocation, and prints
words/s of each and their ratios to label smoothing. Beside it, the teacher's
forward time per batch (measured alone on the same batches), so the overhead
per update can be compared with what the teacher must cost.

usage:
  python benchmarks/word_kd_overhead.py DATA --teacher TEACHER.pt [--soft-labels STORE] [--updates 60]
      [--repeats 2] [--student-args "..."] [--max-tokens 4096] [--cpu | --fp16] [--json FILE]
"""
import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time

from _common import REPO, add_training_arguments, alternate_runs


def teacher_forward_ms(data, args):
    """Mean teacher forward time per batch (no_grad), on the training batches."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import torch

    import utils

    cfg, task, model, _ = utils.build_in_process(
        [data, *shlex.split(args.student_args), "--task", "translation_kd", "--teacher-path", args.teacher,
         "--max-tokens", str(args.max_tokens)] + (["--cpu"] if args.cpu else [])
    )
    task.load_dataset("train")
    itr = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=args.max_tokens, seed=1, num_workers=0
    ).next_epoch_itr(shuffle=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    task.teacher.follow(device, torch.float16 if args.fp16 else torch.float32)  # the student's dtype
    times = []
    for i, sample in enumerate(itr):
        if i >= args.teacher_batches + 2:
            break
        net_input = {k: v.to(device) for k, v in sample["net_input"].items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        task.teacher.logits(net_input)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.mean(times[2:] or times)  # the first 2 batches warm up (unless there are no more)


def step_times(data, args, rounds=5, batches=6):
    """Milliseconds per batch of forward + loss + backward (no optimizer) in one process,
    on the same batches, alternating label_smoothed_cross_entropy, word_kd (online teacher)
    and the teacher's forward alone, ``rounds`` times after a warm-up round: medians."""
    import torch
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    sys.path.insert(0, os.path.join(REPO, "tests"))
    import utils

    source = (["--soft-labels", args.soft_labels, "--kd-temperature", "10", "--kd-topk", "8"] if args.soft_labels
              else ["--teacher-path", args.teacher])
    cfg, task, model, word_kd = utils.build_in_process(
        [data, *shlex.split(args.student_args), "--task", "translation_kd", *source,
         "--criterion", "word_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5",
         "--max-tokens", str(args.max_tokens), "--cpu"]
    )
    ls = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    task.load_dataset("train")
    itr = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=args.max_tokens, seed=1, num_workers=0
    ).next_epoch_itr(shuffle=True)
    samples = [s for _, s in zip(range(batches), itr)]
    if task.teacher is not None:
        task.teacher.follow(torch.device("cpu"), torch.float32)
    model.train()

    def student(criterion):
        for sample in samples:
            loss, _, _ = criterion(model, sample)
            loss.backward()
        model.zero_grad()

    def teacher():
        for sample in samples:
            task.teacher.logits(sample["net_input"])

    jobs = {"label_smoothed_cross_entropy": lambda: student(ls), "word_kd": lambda: student(word_kd)}
    if task.teacher is not None:
        jobs["teacher_forward"] = teacher
    times = {name: [] for name in jobs}
    for r in range(rounds + 1):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job()
            if r > 0:  # round 0 warms up
                times[name].append(1000 * (time.perf_counter() - t0) / len(samples))
    words = sum(s["ntokens"] for s in samples) / len(samples)
    return {name: statistics.median(v) for name, v in times.items()}, words


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("data", help="binarized data directory (fairseq-preprocess output)")
    parser.add_argument("--teacher", help="teacher checkpoint sharing the target dictionary (online word_kd)")
    parser.add_argument("--soft-labels", help="a soft-label store of DATA's train split: word_kd from the store "
                        "(all its K, --store-args added; with --step-rounds: top-8, T 10, instead of an online "
                        "teacher)")
    parser.add_argument("--store-args", default="", help="more word_kd options of the store run, e.g. "
                        "'--kd-temperature 10 --kd-topk 8' for a C-MLM store (not with --step-rounds)")
    add_training_arguments(parser)
    parser.add_argument("--teacher-batches", type=int, default=20, help="batches timed for the teacher forward")
    parser.add_argument("--fp16", action="store_true", help="train with fairseq-train --fp16 (GPU) and time the "
                        "teacher forward in float16 (not with --step-rounds)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--step-rounds", type=int, default=0,
                        help="instead of fairseq-train runs: time forward+loss+backward of each criterion and "
                        "the teacher's forward in one process, alternating, this many rounds (CPU)")
    args = parser.parse_args()
    if args.teacher is None and args.soft_labels is None:
        parser.error("give --teacher, --soft-labels or both")
    if args.fp16 and args.cpu:
        parser.error("--fp16 needs a GPU: remove --cpu or --fp16")
    if args.step_rounds:
        if args.teacher and args.soft_labels:
            parser.error("--step-rounds times one of --teacher / --soft-labels: give one")
        if args.fp16 or args.store_args or args.json:
            parser.error("--fp16, --store-args and --json are for fairseq-train runs, not --step-rounds")
        ms, words = step_times(args.data, args, rounds=args.step_rounds)
        base, kd = ms["label_smoothed_cross_entropy"], ms["word_kd"]
        what = "soft-label store" if args.soft_labels else "online teacher"
        print(f"in one process, median of {args.step_rounds} alternating rounds, {words:.0f} target words a batch:")
        print(f"label_smoothed_cross_entropy  {base:8.1f} ms/batch  {1000 * words / base:8.1f} words/s")
        print(f"word_kd ({what:16s})   {kd:8.1f} ms/batch  {1000 * words / kd:8.1f} words/s")
        print(f"ratio word_kd / baseline      {base / kd:8.3f}")
        print(f"overhead per batch            {kd - base:8.1f} ms")
        if "teacher_forward" in ms:
            t = ms["teacher_forward"]
            print(f"teacher forward per batch     {t:8.1f} ms   (overhead / teacher forward = {(kd - base) / t:.2f})")
        return

    half = ["--fp16"] if args.fp16 else []
    kd = ["--criterion", "word_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5"]
    runs = {"label_smoothed_cross_entropy": ["--criterion", "label_smoothed_cross_entropy",
                                             "--label-smoothing", "0.1", *half]}
    if args.teacher:
        runs["word_kd"] = ["--task", "translation_kd", "--teacher-path", args.teacher, *kd, *half]
    if args.soft_labels:
        runs["word_kd_store"] = ["--task", "translation_kd", "--soft-labels", args.soft_labels, *kd,
                                 *shlex.split(args.store_args), *half]
    results, wpb = alternate_runs(args.data, runs, args, "run {run}: {name:30s} {wps:9.1f} words/s")
    wps = {name: statistics.median(v) for name, v in results.items()}
    base = wps["label_smoothed_cross_entropy"]
    ms_base = 1000 * wpb / base
    out = {"updates": args.updates, "log_interval": args.log_interval, "repeats": args.repeats,
           "max_tokens": args.max_tokens, "words_per_batch": wpb, "fp16": args.fp16,
           "label_smoothed_cross_entropy_wps": base, "runs_wps": results}
    print(f"\nlabel_smoothed_cross_entropy {base:9.1f} words/s  ({ms_base:7.1f} ms/update)")
    if "word_kd_store" in wps:
        store = wps["word_kd_store"]
        out.update(word_kd_store_wps=store, ratio_store=store / base)
        print(f"word_kd (soft-label store)   {store:9.1f} words/s  ({1000 * wpb / store:7.1f} ms/update)")
        print(f"ratio store / baseline       {store / base:9.3f}")
    if "word_kd" in wps:
        kd_wps = wps["word_kd"]
        ms_kd = 1000 * wpb / kd_wps
        t_ms = teacher_forward_ms(args.data, args)
        out.update(word_kd_online_wps=kd_wps, ratio_online=kd_wps / base, overhead_ms_per_update=ms_kd - ms_base,
                   teacher_forward_ms=t_ms, overhead_over_teacher_forward=(ms_kd - ms_base) / t_ms)
        print(f"word_kd (online teacher)     {kd_wps:9.1f} words/s  ({ms_kd:7.1f} ms/update)")
        print(f"ratio word_kd / baseline     {kd_wps / base:9.3f}")
        print(f"overhead per update          {ms_kd - ms_base:9.1f} ms")
        print(f"teacher forward per batch    {t_ms:9.1f} ms   (overhead / teacher forward = {(ms_kd - ms_base) / t_ms:.2f})")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:  # NaN/inf would not be JSON: a failed measure is null
            json.dump({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()},
                      f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
