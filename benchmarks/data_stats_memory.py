#!/usr/bin/env python
"""Peak memory of fairseq-kd-data-stats when the corpus grows 10x: the streamed,
chunked IBM-1 EM (fairseq_kd/data/alignment.py) against, optionally, the
in-memory implementation of an earlier git revision.

usage: python benchmarks/data_stats_memory.py [--data DIR] [--sentences 2900] [--scale 10]
           [--chunk-rows N] [--baseline REV]

  --data        Multi30k text (train.de.gz, train.en.gz); default $FAIRSEQ_KD_DATA/multi30k.
  --sentences   the 1x corpus: the first N De-En training pairs, lowercased and split
                into words and punctuation. Two 10x corpora are built from it: the 1x
                corpus repeated --scale times (10x the alignment rows, the same word
                pairs) and the first --scale * N pairs (10x the rows, more word pairs,
                as a real corpus grows). All in a temporary folder.
  --baseline    also run the command of this git revision (``git archive`` into the
                temporary folder), e.g. 5b68698, the last one that held every
                (sentence, i, j) row in memory.

Each run is one command in a fresh process (``--source --target --remove-bpe none``,
5 EM iterations, grow-diag-final-and, OMP_NUM_THREADS=1), measured with os.wait4:
peak resident memory (ru_maxrss) and wall time. "start-up" is the same command on
10 sentences: Python, torch and fairseq imports. Prints a markdown table and the
load average at the start.
"""
import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the command's cli_main from the fairseq_kd package under sys.argv[1] (this checkout or an archived revision)
CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import fairseq_kd.cli.data_stats as m; "
    "assert m.__file__.startswith(sys.argv[1]), m.__file__; m.cli_main(sys.argv[2:])"
)


def words(line):
    return " ".join(re.findall(r"\w+|[^\w\s]", line.lower()))


def write_corpora(data, root, n, scale):
    """{name: (source file, target file, sentences, rows a direction)} of the 1x and both 10x corpora."""
    lines = {}
    for lang in ("de", "en"):
        with gzip.open(os.path.join(data, f"train.{lang}.gz"), "rt", encoding="utf-8") as f:
            lines[lang] = [words(line) for _, line in zip(range(n * scale), f)]
    if len(lines["de"]) < n * scale:
        sys.exit(f"{data} has {len(lines['de'])} sentences, fewer than --sentences x --scale = {n * scale}")
    corpora = {
        "start-up": (lines["de"][:10], lines["en"][:10]),
        "1x": (lines["de"][:n], lines["en"][:n]),
        f"{scale}x repeated": (lines["de"][:n] * scale, lines["en"][:n] * scale),
        f"{scale}x distinct": (lines["de"], lines["en"]),
    }
    out = {}
    for name, (src, tgt) in corpora.items():
        paths = [os.path.join(root, f"{name.replace(' ', '_')}.{lang}") for lang in ("de", "en")]
        for path, side in zip(paths, (src, tgt)):
            with open(path, "w", encoding="utf-8") as f:
                f.write("".join(s + "\n" for s in side))
        rows = sum((len(s.split()) + 1) * len(t.split()) for s, t in zip(src, tgt))
        out[name] = (*paths, len(src), rows)
    return out


def measure(package_root, argv, cwd):
    """(peak RSS in MiB, wall seconds, the --out JSON) of one command in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, package_root, *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {argv}\n{stderr.decode()[-3000:]}")
    out = argv[argv.index("--out") + 1]
    with open(out) as f:
        return usage.ru_maxrss / 1024, seconds, json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(os.environ.get("FAIRSEQ_KD_DATA", "data"), "multi30k"))
    p.add_argument("--sentences", type=int, default=2900)
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--chunk-rows", type=int, default=None, help="--chunk-rows of the current command")
    p.add_argument("--baseline", help="a git revision whose command also runs (in-memory EM)")
    args = p.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as root:
        corpora = write_corpora(args.data, root, args.sentences, args.scale)
        implementations = {"streamed (this checkout)": REPO}
        if args.baseline:
            archive = os.path.join(root, "baseline")
            os.makedirs(archive)
            tar = subprocess.run(["git", "-C", REPO, "archive", args.baseline, "fairseq_kd"],
                                 check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", archive], input=tar, check=True)
            implementations[f"in memory ({args.baseline})"] = archive
        print("| corpus | sentences | rows a direction | implementation | peak RSS MiB | above start-up MiB "
              "| seconds | C(real) nats |")
        print("|---|---:|---:|---|---:|---:|---:|---:|")
        startup = {}
        for name, (src, tgt, sentences, rows) in corpora.items():
            for impl, package_root in implementations.items():
                argv = ["--source", src, "--target", tgt, "--remove-bpe", "none",
                        "--out", os.path.join(root, "stats.json")]
                if args.chunk_rows and package_root == REPO:
                    argv += ["--chunk-rows", str(args.chunk_rows)]
                rss, seconds, result = measure(package_root, argv, root)
                startup.setdefault(impl, rss)
                print(f"| {name} | {sentences:,} | {rows:,} | {impl} | {rss:,.0f} | {rss - startup[impl]:,.0f} "
                      f"| {seconds:.1f} | {result['real']['complexity']:.6f} |", flush=True)


if __name__ == "__main__":
    main()
