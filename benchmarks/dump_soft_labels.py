#!/usr/bin/env python
"""Benchmarks of the BERT-teacher pipeline: dump throughput (--passes 7 vs 0) and
their top-1 agreement, store bytes per token, dump peak memory at two split
sizes, and student words/s with --soft-labels vs label_smoothed_cross_entropy.

usage: python benchmarks/dump_soft_labels.py DATA TEACHER.pt [--out DIR] [--student-store DIR] [--cpu]
       python benchmarks/dump_soft_labels.py DATA TEACHER.pt --dump-only [--speed-subset train]
           [--speed-sentences 0] [--fp16 | --bf16] [--max-tokens N] [--json FILE]
  DATA     WordPiece data binarized with --joined-dictionary (e.g. the quickstart's
           work_dirs/quickstart_bert/data-bin), with train, valid and test splits
  TEACHER  a conditional_mlm checkpoint (e.g. work_dirs/quickstart_bert/teacher/final.pt);
           with --dump-only also an autoregressive translation checkpoint

--dump-only times one dump of --speed-subset with the teacher's default passes
(7 for C-MLM, none for a translation teacher) and keeps the store in OUT/store
(a store of DATA's split when --speed-sentences is 0): dump tokens/s per device.

Prints one JSON object; every ratio is against a baseline measured in the same run.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(args):
    """Run a command; (stdout+stderr, wall seconds, peak RSS in MiB of that child)."""
    start = time.time()
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{out[-3000:]}")
    return out, time.time() - start, usage.ru_maxrss / 1024


def first_sentences(data, split, n, out):
    """A data directory whose ``split`` is the first ``n`` pairs of DATA's (same dictionaries)."""
    from fairseq.data import data_utils, indexed_dataset

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for name in os.listdir(data):
        if name.startswith("dict."):
            shutil.copy(os.path.join(data, name), out)
        m = re.match(rf"{split}\.(\w+)-(\w+)\.(\w+)\.bin$", name)
        if m:
            prefix = name[: -len(".bin")]
            dataset = data_utils.load_indexed_dataset(os.path.join(data, prefix), None, "mmap")
            builder = indexed_dataset.make_builder(os.path.join(out, prefix + ".bin"), impl="mmap", vocab_size=1 << 16)
            for i in range(min(n, len(dataset))):
                builder.add_item(dataset[i])
            builder.finalize(os.path.join(out, prefix + ".idx"))
    return out


def dump(data, teacher, subset, passes, out, extra):
    """One fairseq-kd-dump-soft-labels run into ``out``, top-8; ``passes`` None: the
    command's default (7 for a C-MLM teacher; a translation teacher takes none)."""
    shutil.rmtree(out, ignore_errors=True)
    passes_args = [] if passes is None else ["--passes", str(passes)]
    log, wall, rss = run_measured([os.path.join(BIN, "fairseq-kd-dump-soft-labels"), data, "--path", teacher,
                                   "--subset", subset, "--topk", "8", *passes_args, "--out", out, *extra])
    m = re.search(r"dumped \S+: (\d+) sentences, (\d+) tokens .* ([\d.]+) tokens/s, (\d+) bytes", log)
    sentences, tokens, tps, nbytes = int(m.group(1)), int(m.group(2)), float(m.group(3)), int(m.group(4))
    with open(os.path.join(out, "header.json")) as f:
        passes = json.load(f).get("passes")  # the command's default when None was asked
    return {"subset": subset, "passes": passes, "sentences": sentences, "tokens": tokens,
            "tokens_per_s": round(tps, 1), "bytes_per_token": round(nbytes / tokens, 2),
            "peak_rss_mib": round(rss, 1), "wall_s": round(wall, 1)}


def student_wps(data, save, criterion, updates, extra):
    shutil.rmtree(save, ignore_errors=True)
    args = [os.path.join(BIN, "fairseq-train"), data, "--user-dir", os.path.join(REPO, "fairseq_kd"),
            "--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "2", "--decoder-layers", "2",
            "--encoder-embed-dim", "128", "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "512",
            "--decoder-ffn-embed-dim", "512", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
            "--optimizer", "adam", "--lr", "0.001", "--max-tokens", "4096", "--max-update", str(updates),
            "--save-dir", save, "--no-save", "--disable-validation", "--log-format", "json",
            "--log-interval", "1000", "--seed", "1", *criterion, *extra]
    log, wall, _ = run_measured(args)
    summary = [json.loads(line[line.find("{"):]) for line in log.splitlines() if '"train_wps"' in line]
    return float(summary[-1]["train_wps"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="binarized WordPiece data (joined dictionary)")
    parser.add_argument("teacher", help="conditional_mlm teacher checkpoint (--dump-only: or a translation one)")
    parser.add_argument("--out", default="work_dirs/bench_dump", help="scratch directory")
    parser.add_argument("--speed-subset", default="test", help="split timed with --passes 7 and 0")
    parser.add_argument("--speed-sentences", type=int, default=200,
                        help="time only the first N pairs of --speed-subset (0 = all)")
    parser.add_argument("--student-store", default=None,
                        help="soft-label store of DATA's train split for the student run "
                             "(default: dump one with --passes 1)")
    parser.add_argument("--student-updates", type=int, default=100, help="updates per student run")
    parser.add_argument("--cpu", action="store_true", help="run on CPU")
    parser.add_argument("--dump-only", action="store_true",
                        help="only time one dump of --speed-subset (the teacher's default passes) into OUT/store")
    half = parser.add_mutually_exclusive_group()
    half.add_argument("--fp16", action="store_true", help="dump in float16 (GPU)")
    half.add_argument("--bf16", action="store_true", help="dump in bfloat16 (GPU)")
    parser.add_argument("--max-tokens", type=int, default=None, help="the dump's --max-tokens (default: its own)")
    parser.add_argument("--json", help="also write the JSON object to this file")
    args = parser.parse_args()
    extra = (["--cpu"] if args.cpu else []) + (["--fp16"] if args.fp16 else []) + (["--bf16"] if args.bf16 else [])
    if args.max_tokens:
        extra += ["--max-tokens", str(args.max_tokens)]
    os.makedirs(args.out, exist_ok=True)
    result = {}

    speed_data = args.data
    if args.speed_sentences:
        speed_data = first_sentences(args.data, args.speed_subset, args.speed_sentences, os.path.join(args.out, "speed_data"))
    if args.dump_only:
        store = os.path.join(args.out, "store")
        result = dump(speed_data, args.teacher, args.speed_subset, None, store, extra)
        result.update(store=store, fp16=args.fp16, bf16=args.bf16, max_tokens=args.max_tokens)
        write_result(result, args.json)
        return
    p7 = dump(speed_data, args.teacher, args.speed_subset, 7, os.path.join(args.out, "p7"), extra)
    p0 = dump(speed_data, args.teacher, args.speed_subset, 0, os.path.join(args.out, "p0"), extra)
    ids7 = np.load(os.path.join(args.out, "p7", "ids.npy"))
    ids0 = np.load(os.path.join(args.out, "p0", "ids.npy"))
    result["throughput"] = {"passes_7": p7, "passes_0": p0,
                            "speedup_7_vs_0": round(p7["tokens_per_s"] / p0["tokens_per_s"], 2),
                            "top1_agreement_7_vs_0": round(float((ids7[:, 0] == ids0[:, 0]).mean()), 4),
                            "top8_set_overlap_7_vs_0": round(float(np.mean(
                                [len(set(a) & set(b)) / 8 for a, b in zip(ids7, ids0)])), 4)}

    # Peak memory with --passes 1 on the first N pairs of the split and on all of it.
    result["memory_passes_1"] = [
        dump(d, args.teacher, args.speed_subset, 1, os.path.join(args.out, f"mem_{i}"), extra)
        for i, d in enumerate(dict.fromkeys([speed_data, args.data]))
    ]

    store = args.student_store
    if store is None:
        store = os.path.join(args.out, "train_p1")
        result["student_store"] = dump(args.data, args.teacher, "train", 1, store, extra)
    ls = student_wps(args.data, os.path.join(args.out, "s_ls"), ["--criterion", "label_smoothed_cross_entropy",
                     "--label-smoothing", "0.1"], args.student_updates, extra)
    kd = student_wps(args.data, os.path.join(args.out, "s_kd"), [
        "--task", "translation_kd", "--soft-labels", store, "--criterion", "word_kd", "--label-smoothing", "0.1",
        "--kd-alpha", "0.5", "--kd-temperature", "10", "--kd-topk", "8"], args.student_updates, extra)
    result["student_wps"] = {"label_smoothed_cross_entropy": ls, "word_kd_soft_labels": kd,
                             "ratio": round(kd / ls, 3), "updates": args.student_updates}
    write_result(result, args.json)


def write_result(result, path=None):
    """Print the JSON object; with ``path``, also write it there (atomically)."""
    print(json.dumps(result, indent=2))
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
