#!/usr/bin/env python
"""Training speed of word_kd's objectives against forward KL, in one invocation.

Trains the same student on the same data with the same online teacher for a fixed
number of updates with each objective (``--kd-divergence``, ``--kd-selection``,
``--kd-on-policy-ratio``), alternating the runs so that drift in the machine's load
hits every objective alike, and prints the median words/s of each and its ratio to
``word_kd`` with the default forward KL.

usage:
  python benchmarks/kd_objectives.py DATA --teacher TEACHER.pt [--updates 40] [--repeats 2]
      [--only forward_kl,reverse_kl,...] [--cpu] [--json FILE]
"""
import argparse
import json
import os
import statistics

from _common import add_training_arguments, alternate_runs

# name -> the word_kd options of that run (every run: --kd-alpha 0.5, label smoothing 0.1)
OBJECTIVES = {
    "forward_kl": [],
    "reverse_kl": ["--kd-divergence", "reverse_kl"],
    "jsd": ["--kd-divergence", "jsd", "--kd-beta", "0.5"],
    "skew_forward_kl": ["--kd-divergence", "skew_forward_kl", "--kd-skew", "0.1"],
    "skew_reverse_kl": ["--kd-divergence", "skew_reverse_kl", "--kd-skew", "0.1"],
    "tvd": ["--kd-divergence", "tvd"],
    "selection_batch": ["--kd-selection", "batch", "--kd-selection-ratio", "0.5"],
    "selection_global": ["--kd-selection", "global", "--kd-selection-ratio", "0.5"],
    "on_policy_0.5": ["--kd-on-policy-ratio", "0.5"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("data", help="binarized data directory (fairseq-preprocess output)")
    parser.add_argument("--teacher", required=True, help="teacher checkpoint sharing the student's dictionaries")
    parser.add_argument("--only", default=",".join(OBJECTIVES),
                        help=f"comma-separated objectives to time (forward_kl always runs); of {', '.join(OBJECTIVES)}")
    add_training_arguments(parser, updates=40)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    names = ["forward_kl"] + [n for n in args.only.split(",") if n and n != "forward_kl"]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        parser.error(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    base = ["--task", "translation_kd", "--teacher-path", args.teacher, "--criterion", "word_kd",
            "--label-smoothing", "0.1", "--kd-alpha", "0.5"]
    runs = {name: base + OBJECTIVES[name] for name in names}
    results, wpb = alternate_runs(args.data, runs, args, "run {run}: {name:20s} {wps:9.1f} words/s")
    wps = {name: statistics.median(v) for name, v in results.items()}
    ref = wps["forward_kl"]
    print(f"\n{'objective':20s} {'words/s':>9s} {'vs forward_kl':>14s}   ({wpb:.0f} target words a batch)")
    for name in names:
        print(f"{name:20s} {wps[name]:9.1f} {wps[name] / ref:14.3f}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"updates": args.updates, "repeats": args.repeats, "max_tokens": args.max_tokens,
                       "words_per_batch": wpb, "wps": wps, "ratio_to_forward_kl": {n: wps[n] / ref for n in names},
                       "runs_wps": results}, f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
