#!/usr/bin/env python
"""Student words/s from an autoregressive teacher's soft-label stores, and when a dump pays back.

In one invocation: dumps DATA's training split with the teacher as a top-8 store and
as a 12-sample store (``fairseq-kd-dump-soft-labels``, wall time measured, model
loading included), then trains the same student for a fixed number of updates with
``label_smoothed_cross_entropy``, online ``word_kd`` (the teacher's forward every
step, full vocabulary), ``word_kd`` from the top-8 store and from the 12-sample store,
alternating the four ``--repeats`` times so that drift in the machine's load hits
each alike. Prints the median words/s of each, its ratio to label smoothing (within
each round, then the median over rounds), and for each store the number of training
epochs after which dump + store-trained epochs cost less than online-teacher epochs:
dump wall / (epoch time online - epoch time from the store), an epoch being the
split's target tokens (the dump's count) at the round's words/s.

usage: python benchmarks/store_payback.py DATA TEACHER.pt [--updates 60] [--repeats 2] [--out DIR]
       [--cpu] [--json FILE]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from _common import add_training_arguments, alternate_runs

STORES = {"top8": ["--topk", "8"], "sampled12": ["--store", "sampled", "--samples", "12", "--temperature", "1"]}


def dump(data, teacher, out, store_args, cpu):
    """(wall seconds, target tokens, bytes per token) of one dump of the training split."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [os.path.join(os.path.dirname(sys.executable), "fairseq-kd-dump-soft-labels"), data, "--path", teacher,
           "--subset", "train", "--out", out, *store_args] + (["--cpu"] if cpu else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    line = [x for x in proc.stdout.splitlines() if x.startswith("dumped ")][-1]
    tokens = int(re.search(r"sentences, (\d+) tokens", line).group(1))
    bpt = float(re.search(r"\(([0-9.]+) B/token\)", line).group(1))
    return wall, tokens, bpt


def payback_epochs(dump_wall, tokens, wps_online, wps_store):
    """Epochs after which dump + store epochs cost less than online epochs (inf if never)."""
    saved = tokens / wps_online - tokens / wps_store  # seconds saved per epoch
    return dump_wall / saved if saved > 0 else float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("data", help="binarized data directory (fairseq-preprocess output)")
    parser.add_argument("teacher", help="autoregressive translation teacher sharing DATA's target dictionary")
    add_training_arguments(parser)
    parser.add_argument("--out", default="work_dirs/bench_store_payback", help="scratch directory of the stores")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    dumps = {}
    for name, store_args in STORES.items():
        dumps[name] = dump(args.data, args.teacher, os.path.join(args.out, name), store_args, args.cpu)
        wall, tokens, bpt = dumps[name]
        print(f"dump {name:10s} {wall:7.1f} s wall ({tokens / wall:7.0f} target tokens/s, loading included), "
              f"{bpt:.1f} B/token", flush=True)

    kd = ["--task", "translation_kd", "--criterion", "word_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5"]
    runs = {
        "label_smoothed_cross_entropy": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
        "word_kd online": [*kd, "--teacher-path", args.teacher],
        "word_kd top8 store": [*kd, "--soft-labels", os.path.join(args.out, "top8")],
        "word_kd sampled12 store": [*kd, "--soft-labels", os.path.join(args.out, "sampled12")],
    }
    results, wpb = alternate_runs(args.data, runs, args, "run {run}: {name:30s} {wps:9.1f} words/s")
    # Ratios within each round (the four runs of a round see about the same load), then their median.
    ls = results["label_smoothed_cross_entropy"]
    ratios = {name: statistics.median(v / b for v, b in zip(runs_wps, ls)) for name, runs_wps in results.items()}
    wps = {name: statistics.median(v) for name, v in results.items()}
    print(f"\n{args.repeats} alternating rounds of {args.updates} updates, {wpb:.0f} target words a batch:")
    print(f"{'run':30s} {'words/s':>9s} {'vs LS':>7s}  (median words/s; median of each round's ratio)")
    for name, v in wps.items():
        print(f"{name:30s} {v:9.1f} {ratios[name]:7.3f}")
    out = {"updates": args.updates, "repeats": args.repeats, "max_tokens": args.max_tokens, "words_per_batch": wpb,
           "runs_wps": results, "median_wps": wps, "ratio_to_label_smoothing": ratios, "dumps": {}}
    for name, (wall, tokens, bpt) in dumps.items():
        store = results[f"word_kd {name} store"]
        epochs = statistics.median(payback_epochs(wall, tokens, o, s) for o, s in zip(results["word_kd online"], store))
        out["dumps"][name] = {"wall_s": wall, "tokens": tokens, "bytes_per_token": bpt, "payback_epochs": epochs}
        print(f"{name} store: dump {wall:.0f} s for {tokens} target tokens; it pays back after {epochs:.2f} epochs "
              f"(median over the rounds)")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2, default=lambda x: None)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
