#!/usr/bin/env python
"""Online-teacher overhead of --criterion word_kd.

Trains the same student on the same data for a fixed number of updates with
``label_smoothed_cross_entropy`` and with ``word_kd`` (online teacher),
alternating the runs, and prints words/s of each and their ratio. Beside it,
the teacher's forward time per batch (measured alone on the same batches), so
the overhead per update can be compared with what the teacher must cost.

usage:
  python benchmarks/word_kd_overhead.py DATA --teacher TEACHER.pt [--updates 60] [--repeats 2]
      [--student-args "..."] [--max-tokens 4096] [--cpu]
"""
import argparse
import os
import shlex
import statistics
import sys
import time

from _common import REPO, STUDENT, alternate_runs


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
    task.teacher.follow(device, torch.float32)
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
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.mean(times)


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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", help="teacher checkpoint sharing the target dictionary")
    source.add_argument("--soft-labels", help="with --step-rounds: a soft-label store of DATA's train split "
                        "(word_kd from the store, top-8, T 10, instead of an online teacher)")
    parser.add_argument("--updates", type=int, default=60, help="updates per run")
    parser.add_argument("--log-interval", type=int, default=10, help="updates per timed interval")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each criterion")
    parser.add_argument("--max-tokens", type=int, default=4096, help="batch size in tokens")
    parser.add_argument("--student-args", default=STUDENT, help="student architecture arguments")
    parser.add_argument("--teacher-batches", type=int, default=20, help="batches timed for the teacher forward")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    parser.add_argument("--step-rounds", type=int, default=0,
                        help="instead of fairseq-train runs: time forward+loss+backward of each criterion and "
                        "the teacher's forward in one process, alternating, this many rounds (CPU)")
    args = parser.parse_args()
    if args.step_rounds:
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
    if args.teacher is None:
        parser.error("--soft-labels needs --step-rounds")

    ls = ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
    kd = ["--task", "translation_kd", "--teacher-path", args.teacher, "--criterion", "word_kd",
          "--label-smoothing", "0.1", "--kd-alpha", "0.5"]
    runs = {"label_smoothed_cross_entropy": ls, "word_kd": kd}
    results, wpb = alternate_runs(args.data, runs, args, "run {run}: {name:30s} {wps:9.1f} words/s")
    base = statistics.median(results["label_smoothed_cross_entropy"])
    kd_wps = statistics.median(results["word_kd"])
    ms_base, ms_kd = 1000 * wpb / base, 1000 * wpb / kd_wps
    t_ms = teacher_forward_ms(args.data, args)
    print(f"\nlabel_smoothed_cross_entropy {base:9.1f} words/s  ({ms_base:7.1f} ms/update)")
    print(f"word_kd (online teacher)     {kd_wps:9.1f} words/s  ({ms_kd:7.1f} ms/update)")
    print(f"ratio word_kd / baseline     {kd_wps / base:9.3f}")
    print(f"overhead per update          {ms_kd - ms_base:9.1f} ms")
    print(f"teacher forward per batch    {t_ms:9.1f} ms   (overhead / teacher forward = {(ms_kd - ms_base) / t_ms:.2f})")


if __name__ == "__main__":
    main()
