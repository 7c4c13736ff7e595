#!/usr/bin/env python
"""Top-K vs sampled soft-label stores: dump target tokens/s and bytes per token.

Dumps the same split with the same teacher as a top-8 store, a 12-sample store
(``--store sampled --samples 12``) and a top-12 store (the sampled store's width),
alternating the dumps ``--repeats`` times in one invocation so that drift in the
machine's load hits each alike, and prints the median target tokens/s of each (as
the command counts them: model loading excluded), its ratio to top-8, and the
store's bytes per target token.

usage: python benchmarks/sampled_store.py DATA TEACHER.pt [--subset valid] [--repeats 3] [--out DIR] [--cpu]
       [--json FILE]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

STORES = {"top8": ["--topk", "8"], "sampled12": ["--store", "sampled", "--samples", "12"], "top12": ["--topk", "12"]}


def dump(data, teacher, out, store_args, args):
    """(tokens/s, bytes per token) of one dump, from the command's summary line."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [os.path.join(os.path.dirname(sys.executable), "fairseq-kd-dump-soft-labels"), data, "--path", teacher,
           "--subset", args.subset, "--out", out, *store_args] + (["--cpu"] if args.cpu else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    line = [x for x in proc.stdout.splitlines() if x.startswith("dumped ")][-1]
    tps = float(re.search(r"([0-9.]+) tokens/s", line).group(1))
    bpt = float(re.search(r"\(([0-9.]+) B/token\)", line).group(1))
    return tps, bpt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("data", help="binarized data directory")
    parser.add_argument("teacher", help="teacher checkpoint (conditional_mlm or autoregressive translation)")
    parser.add_argument("--subset", default="valid", help="split to dump (default: valid)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating dumps of each store")
    parser.add_argument("--out", default="work_dirs/bench_sampled", help="scratch directory")
    parser.add_argument("--cpu", action="store_true", help="run on CPU")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    speed = {name: [] for name in STORES}
    size = {}
    for r in range(args.repeats):
        for name, store_args in STORES.items():
            tps, size[name] = dump(args.data, args.teacher, os.path.join(args.out, name), store_args, args)
            speed[name].append(tps)
            print(f"run {r + 1}: {name:10s} {tps:9.0f} target tokens/s  {size[name]:6.1f} B/token", flush=True)
    med = {name: statistics.median(v) for name, v in speed.items()}
    print(f"\n{'store':10s} {'tokens/s':>9s} {'vs top8':>8s} {'B/token':>8s}")
    for name in STORES:
        print(f"{name:10s} {med[name]:9.0f} {med[name] / med['top8']:8.3f} {size[name]:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tokens_per_s": med, "ratio_to_top8": {n: med[n] / med["top8"] for n in STORES},
                       "bytes_per_token": size, "runs": speed, "subset": args.subset}, f, indent=2)
    shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
