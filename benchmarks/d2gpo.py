#!/usr/bin/env python
"""Speed and memory of --criterion d2gpo.

1. Words/s: trains the same student on the same data for a fixed number of
   updates with ``label_smoothed_cross_entropy`` and with ``d2gpo``,
   alternating the runs, and prints the median words/s of each and their
   ratio (goal: d2gpo >= 0.9x).
2. Memory: builds a prior at V = 32k, k = 256 from random embeddings (the
   similarity structure does not change sizes or speed) and prints its size
   on disk and in memory, its build time, and the dense V x V float32 matrix
   of the paper's code for comparison.

usage:
  python benchmarks/d2gpo.py DATA [--prior DIR] [--updates 60] [--repeats 2]
      [--student-args "..."] [--d2gpo-args "..."] [--max-tokens 2048] [--cpu]
      [--memory-vocab 32000] [--memory-k 256]

Without --prior, a prior (k = 256) of DATA's target dictionary is built from
random embeddings in a temporary directory.
"""
import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

from _common import REPO, add_training_arguments, alternate_runs

sys.path.insert(0, REPO)


def step_wps(data, prior_dir, args, rounds=5, batches=8):
    """Words/s of forward + loss + backward (no optimizer) in one process, the two
    criterions alternating on the same batches ``rounds`` times: (ls, d2gpo) medians."""
    import torch
    from fairseq import options, tasks
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_kd.criterions.d2gpo import D2GPoCriterion

    parser = options.get_training_parser()
    ns = options.parse_args_and_arch(parser, [
        data, "--user-dir", os.path.join(REPO, "fairseq_kd"), *shlex.split(args.student_args),
        "--criterion", "d2gpo", "--label-smoothing", "0.1", "--d2gpo-prior", prior_dir,
        *shlex.split(args.d2gpo_args), "--max-tokens", str(args.max_tokens), "--cpu",
    ])
    cfg = convert_namespace_to_omegaconf(ns)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterions = {
        "label_smoothed_cross_entropy": LabelSmoothedCrossEntropyCriterion(task, False, 0.1),
        "d2gpo": task.build_criterion(cfg.criterion),
    }
    assert isinstance(criterions["d2gpo"], D2GPoCriterion)
    task.load_dataset("train")
    itr = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=args.max_tokens, seed=1, num_workers=0
    ).next_epoch_itr(shuffle=True)
    samples = [s for _, s in zip(range(batches), itr)]
    words = sum(s["ntokens"] for s in samples)
    model.train()
    wps = {name: [] for name in criterions}
    for r in range(rounds + 1):
        for name, criterion in criterions.items():
            t0 = time.perf_counter()
            for sample in samples:
                loss, _, _ = criterion(model, sample)
                loss.backward()
            if r > 0:  # round 0 warms up
                wps[name].append(words / (time.perf_counter() - t0))
            model.zero_grad()
    return {name: statistics.median(v) for name, v in wps.items()}


def random_prior(out, dictionary_path, k, dim=64, dtype="float16"):
    """A prior store for a dictionary from random embeddings: (header, seconds, dictionary)."""
    import torch
    from fairseq.data import Dictionary

    from fairseq_kd.data import array_store, prior

    d = Dictionary.load(dictionary_path)
    emb = torch.randn(len(d), dim, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    header = prior.build(
        out, emb, ~prior.special_symbols(d), min(k, len(d)), 1.0,
        {"dictionary_checksum": array_store.dictionary_checksum(d)}, dtype=dtype,
    )
    return header, time.perf_counter() - t0, d


def memory(args):
    """Prior size at V = --memory-vocab, k = --memory-k, against the dense V x V float32."""
    from fairseq.data import Dictionary

    from fairseq_kd.data import prior

    V, k = args.memory_vocab, args.memory_k
    with tempfile.TemporaryDirectory() as tmp:
        d = Dictionary()
        for i in range(V - d.nspecial):
            d.add_symbol(f"w{i}")
        d.save(os.path.join(tmp, "dict.txt"))
        _, seconds, d = random_prior(os.path.join(tmp, "prior"), os.path.join(tmp, "dict.txt"), k)
        disk = sum(os.path.getsize(os.path.join(tmp, "prior", f"{n}.npy")) for n in ("ids", "weights"))
        t0 = time.perf_counter()
        table = prior.load(os.path.join(tmp, "prior"), d)
        load_s = time.perf_counter() - t0
    dense = V * V * 4
    print(f"prior V={V} k={k} float16: {disk / 2**20:.1f} MiB on disk, {table.nbytes() / 2**20:.1f} MiB in memory "
          f"(built in {seconds:.1f} s, blocks of 512 x V float32 = {512 * V * 4 / 2**20:.0f} MiB; loaded in "
          f"{load_s:.2f} s); dense V x V float32: {dense / 2**30:.2f} GiB = {dense / table.nbytes():.0f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="binarized translation data (fairseq-preprocess output)")
    parser.add_argument("--prior", help="a prior store for DATA's target dictionary (default: random, k=256)")
    parser.add_argument("--target-lang", help="target language of DATA (default: from its dict.*.txt files)")
    add_training_arguments(parser, max_tokens=2048)
    parser.add_argument("--d2gpo-args", default="",
                        help='extra arguments of the d2gpo runs, e.g. "--d2gpo-student-temperature 2"')
    parser.add_argument("--step-rounds", type=int, default=5,
                        help="rounds of the in-process forward+backward comparison (0: skip)")
    parser.add_argument("--memory-vocab", type=int, default=32000, help="V of the memory comparison (0: skip)")
    parser.add_argument("--memory-k", type=int, default=256, help="k of the memory comparison")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        prior_dir = args.prior
        if prior_dir is None:
            dicts = sorted(f for f in os.listdir(args.data) if f.startswith("dict.") and f.endswith(".txt"))
            tgt = args.target_lang or dicts[-1].split(".")[1]
            prior_dir = os.path.join(tmp, "prior")
            header, seconds, _ = random_prior(prior_dir, os.path.join(args.data, f"dict.{tgt}.txt"), 256)
            print(f"random prior for dict.{tgt}.txt: V={header['vocab_size']} k={header['k']} ({seconds:.1f} s)")
        runs = {
            "label_smoothed_cross_entropy": [
                "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
            "d2gpo": ["--criterion", "d2gpo", "--label-smoothing", "0.1", "--d2gpo-prior", prior_dir,
                      *shlex.split(args.d2gpo_args)],
        }
        results, _ = alternate_runs(
            args.data, runs, args, "run {run} {name}: {wps:.0f} words/s ({wpb:.0f} words/batch)"
        )
        if args.repeats:
            base = statistics.median(results["label_smoothed_cross_entropy"])
            d2gpo = statistics.median(results["d2gpo"])
            print(f"fairseq-train median words/s: label_smoothed_cross_entropy {base:.0f}, d2gpo {d2gpo:.0f}, "
                  f"ratio {d2gpo / base:.3f}", flush=True)
        if args.step_rounds:
            steps = step_wps(args.data, prior_dir, args, rounds=args.step_rounds)
            base, d2gpo = steps["label_smoothed_cross_entropy"], steps["d2gpo"]
            print(f"forward+backward in one process, alternating, median of {args.step_rounds} rounds: "
                  f"label_smoothed_cross_entropy {base:.0f} words/s, d2gpo {d2gpo:.0f}, ratio {d2gpo / base:.3f}")
    if args.memory_vocab:
        memory(args)


if __name__ == "__main__":
    main()
