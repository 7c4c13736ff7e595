"""What the training-speed benchmarks share: the student, timed fairseq-train runs.

A benchmark compares criterions by training the same student on the same data
for a fixed number of updates with each, alternating the runs so that drift in
the machine's load hits every criterion alike.
"""
import json
import os
import shlex
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 2+2-layer, 128-wide Transformer: small enough for a CPU, the same for every criterion.
STUDENT = (
    "--arch transformer --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 "
    "--decoder-embed-dim 128 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 "
    "--encoder-attention-heads 4 --decoder-attention-heads 4 --share-all-embeddings"
)


def add_training_arguments(parser, updates=60, max_tokens=4096):
    """The options :func:`train_wps` and :func:`alternate_runs` read from ``args``."""
    parser.add_argument("--updates", type=int, default=updates, help="updates per training run")
    parser.add_argument("--log-interval", type=int, default=10, help="updates per timed interval")
    parser.add_argument("--repeats", type=int, default=2, help="alternating fairseq-train runs of each criterion")
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help="batch size in tokens")
    parser.add_argument("--student-args", default=STUDENT, help="student architecture arguments")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")


def train_wps(data, criterion_args, args):
    """(median words/s of fairseq-train's log intervals after the first, median words/batch).

    ``args`` gives ``student_args``, ``max_tokens``, ``updates``, ``log_interval``
    and ``cpu``; ``criterion_args`` the ``--criterion ...`` (and ``--task ...``) words.
    """
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "fairseq-train"), data,
        "--user-dir", os.path.join(REPO, "fairseq_kd"), *shlex.split(args.student_args),
        *criterion_args, "--optimizer", "adam", "--lr", "0.0005", "--max-tokens", str(args.max_tokens),
        "--max-update", str(args.updates), "--log-format", "json", "--log-interval", str(args.log_interval),
        "--no-save", "--disable-validation", "--no-progress-bar", "--seed", "1", "--num-workers", "0",
    ] + (["--cpu"] if args.cpu else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    records = [
        json.loads(line.split("| train_inner | ", 1)[1])
        for line in (proc.stdout + proc.stderr).splitlines() if "| train_inner |" in line
    ]
    wps = [float(r["wps"]) for r in records[1:]] or [float(r["wps"]) for r in records]
    return statistics.median(wps), statistics.median(float(r["wpb"]) for r in records)


def alternate_runs(data, runs, args, line):
    """Train with each of ``runs`` (name -> criterion arguments) ``args.repeats`` times,
    alternating, and print ``line.format(run=, name=, wps=, wpb=)`` after each run.

    Returns ({name: [words/s of each run]}, words/batch of the last run).
    """
    results = {name: [] for name in runs}
    wpb = None
    for r in range(args.repeats):
        for name, criterion_args in runs.items():
            wps, wpb = train_wps(data, criterion_args, args)
            results[name].append(wps)
            print(line.format(run=r + 1, name=name, wps=wps, wpb=wpb), flush=True)
    return results, wpb
