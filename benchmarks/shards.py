#!/usr/bin/env python
"""Wall time of fairseq-kd-dump-soft-labels on one split: one process vs N shards
run at once (then fairseq-kd-merge-shards), and whether the merge equals the
single-process store.

usage: python benchmarks/shards.py [DATA TEACHER.pt] [--shards 2] [--subset train]
           [--topk 8] [--passes 7] [--max-tokens 8192] [--sort-window 250] [--threads 1] [--out DIR] [--cpu]
           [--tiny] [--tiny-sentences 2000]

  DATA TEACHER  WordPiece data binarized with --joined-dictionary and a conditional_mlm
                checkpoint. Default: the quickstart's work_dirs/quickstart_bert/data-bin and
                work_dirs/quickstart_bert/teacher/final.pt when both exist, else the tests'
                tiny random BERT (tests/utils.py) fine-tuned 25 updates on a copy task of
                --tiny-sentences sentences, built in a temporary folder (also with --tiny).

Every process runs with OMP_NUM_THREADS=--threads (default 1), so N shards use
N cores where one process uses one. Wall times are whole commands (Python and
fairseq start-up included); "dump tokens/s" is what each command reports for its
dump loop. Prints a markdown table; ratios are against the single process
measured in the same run. Run it on an otherwise idle machine: the load average
at start is printed with the table.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "work_dirs", "quickstart_bert")


def command(name):
    return os.path.join(BIN, name)


def tiny_setup(root, sentences):
    """The tests' tiny random BERT teacher and its copy task: (data, teacher)."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import utils

    bert, data = utils.make_bert_task(root, n_train=sentences)
    utils.train_bert_teacher(data, bert, os.path.join(root, "teacher"), max_update=25)
    return data, os.path.join(root, "teacher", "checkpoint_last.pt")


def dump_args(args, out):
    extra = ["--cpu"] if args.cpu else []
    return [command("fairseq-kd-dump-soft-labels"), args.data, "--path", args.teacher, "--subset", args.subset,
            "--topk", str(args.topk), "--passes", str(args.passes), "--max-tokens", str(args.max_tokens),
            "--sort-window", str(args.sort_window), "--out", out, *extra]


def start(cmd, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"):
        env.pop(key, None)  # the shard comes from the options only
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc):
    out = proc.communicate()[0]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(proc.args)} failed ({proc.returncode}):\n{out[-3000:]}")
    return out


def reported_tps(log):
    m = re.search(r"sentences resumed\), (\d+) tokens/s", log)
    return float(m.group(1)) if m else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="?", default=None)
    p.add_argument("teacher", nargs="?", default=None)
    p.add_argument("--shards", type=int, default=2, help="shards run at once (default: 2)")
    p.add_argument("--subset", default="train")
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--passes", type=int, default=7)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--sort-window", type=int, default=250,
                   help="the dump's --sort-window (default: 250, so a 1,000-sentence split has 4 blocks to share)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process (default: 1)")
    p.add_argument("--cpu", action="store_true", help="pass --cpu to the dumps")
    p.add_argument("--tiny", action="store_true", help="use the tiny fallback even when the quickstart is there")
    p.add_argument("--tiny-sentences", type=int, default=2000,
                   help="sentences of the tiny fallback split (default: 2000)")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one, removed)")
    args = p.parse_args()

    work = args.out or tempfile.mkdtemp(prefix="bench_shards.")
    os.makedirs(work, exist_ok=True)
    if args.data is None:
        data, teacher = os.path.join(QUICKSTART, "data-bin"), os.path.join(QUICKSTART, "teacher", "final.pt")
        if os.path.isdir(data) and os.path.isfile(teacher) and not args.tiny:
            args.data, args.teacher, source = data, teacher, "quickstart_bert"
        else:
            args.data, args.teacher = tiny_setup(os.path.join(work, "tiny"), args.tiny_sentences)
            source = f"tiny random BERT, copy task of {args.tiny_sentences} sentences"
    else:
        source = args.data
    load = os.getloadavg()

    single = os.path.join(work, "one")
    shutil.rmtree(single, ignore_errors=True)
    t0 = time.time()
    log_one = finish(start(dump_args(args, single), args.threads))
    wall_one = time.time() - t0
    m = re.search(r"dumped \S+: (\d+) sentences, (\d+) tokens", log_one)
    sentences, tokens = int(m.group(1)), int(m.group(2))

    sharded = os.path.join(work, "sharded")
    for path in (sharded, sharded + ".parts"):
        shutil.rmtree(path, ignore_errors=True)
    t0 = time.time()
    procs = [start(dump_args(args, sharded) + ["--num-shards", str(args.shards), "--shard-id", str(i)], args.threads)
             for i in range(args.shards)]
    logs = [finish(proc) for proc in procs]
    wall_shards = time.time() - t0
    t0 = time.time()
    finish(start([command("fairseq-kd-merge-shards"), sharded], args.threads))
    wall_merge = time.time() - t0

    a = {n: np.load(os.path.join(single, f"{n}.npy")) for n in ("ids", "logits", "offsets")}
    b = {n: np.load(os.path.join(sharded, f"{n}.npy")) for n in ("ids", "logits", "offsets")}
    same = {n: bool(np.array_equal(a[n], b[n])) for n in a}
    max_diff = float(np.abs(a["logits"].astype(np.float32) - b["logits"].astype(np.float32)).max()) if tokens else 0.0
    shard_tps = [reported_tps(log) for log in logs]
    ranges = [re.search(r"sentences \[(\d+), (\d+)\)", log).group(0) for log in logs]

    total = wall_shards + wall_merge
    print(f"data: {source} ({args.subset}: {sentences} sentences, {tokens} target tokens); "
          f"--topk {args.topk} --passes {args.passes} --max-tokens {args.max_tokens} "
          f"--sort-window {args.sort_window}; "
          f"OMP_NUM_THREADS={args.threads} per process; {os.cpu_count()} CPUs; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    print("| run | processes | wall s | tokens/s (wall) | dump tokens/s (reported) | speed-up vs 1 |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 process | 1 | {wall_one:.1f} | {tokens / wall_one:.0f} | {reported_tps(log_one):.0f} | 1.00 |")
    print(f"| {args.shards} shards at once | {args.shards} | {wall_shards:.1f} | {tokens / wall_shards:.0f} | "
          f"{' + '.join(f'{t:.0f}' for t in shard_tps)} | {wall_one / wall_shards:.2f} |")
    print(f"| merge | 1 | {wall_merge:.1f} | | | |")
    print(f"| {args.shards} shards + merge | {args.shards} | {total:.1f} | {tokens / total:.0f} | | "
          f"{wall_one / total:.2f} |")
    print()
    print(f"shard ranges: {', '.join(ranges)}; merged == single: "
          + ", ".join(f"{n} {'yes' if s else 'no'}" for n, s in same.items())
          + f" (max |logit difference| {max_diff:.4g})")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
