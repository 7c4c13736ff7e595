"""What every fairseq-kd-* command shares: start-up and errors, provenance, progress, logging."""
import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Type

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def setup_logging() -> None:
    """Log records go to stdout at $LOGLEVEL (default INFO): stderr is left to the
    one-line error of :func:`run_command` (and progress bars on a terminal).

    Importing fairseq calls ``logging.basicConfig`` (its wav2vec2 and speech
    modules do, on stderr, at DEBUG), which would make the call here a no-op:
    that plain stderr handler is replaced. Other handlers (pytest's) are kept.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__):
            root.removeHandler(handler)
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        stream=sys.stdout,
    )


EXIT_USER_ERROR = 2  # argparse's status for a usage error: every fairseq-kd-* command's for bad input


def run_command(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Any],
    argv: Optional[Sequence[str]] = None,
    errors: Tuple[Type[BaseException], ...] = (FileNotFoundError, ValueError),
    message: Optional[Callable[[argparse.Namespace, BaseException], str]] = None,
) -> Tuple[argparse.Namespace, Any]:
    """A command's start: set up logging, parse ``argv``, return ``(args, run(args))``.

    An expected error (one of ``errors``: bad input, a missing file; the
    library raises them naming the input and the fix) ends the command as
    argparse ends one: ONE line ``<prog>: error: <message>`` on stderr, exit
    status 2, no traceback. ``message(args, error)`` words it (default: the
    error's own text); a message of several lines is joined into one.
    """
    setup_logging()
    args = parser.parse_args(argv)
    try:
        return args, run(args)
    except errors as e:
        text = message(args, e) if message else str(e)
        text = " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__
        print(f"{parser.prog}: error: {text}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def check_minimums(args: argparse.Namespace, minimums: Dict[str, float]) -> None:
    """Raise ValueError naming the first option below its minimum: ``{"beam": 1}``
    checks ``args.beam >= 1`` (an option left at None passes)."""
    for name, least in minimums.items():
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")


def input_file(path: str, what: str) -> str:
    """``path`` when it is a file; else FileNotFoundError or ValueError naming ``what``
    (the option, e.g. "--input0") and the path."""
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a directory: give a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def add_shard_arguments(parser: argparse.ArgumentParser, balance: str, parts: str) -> None:
    """``--num-shards`` / ``--shard-id`` of the offline stages (see :mod:`fairseq_kd.data.shards`).

    ``balance`` says what the shards are balanced by, ``parts`` where each writes its part.
    """
    parser.add_argument("--num-shards", type=int, default=None,
                        help=f"split the work into N contiguous shards balanced by {balance}; each writes a part "
                        f"under {parts} and fairseq-kd-merge-shards OUT joins them (default: WORLD_SIZE under "
                        "torchrun, SLURM_NTASKS under srun, else 1)")
    parser.add_argument("--shard-id", type=int, default=None,
                        help="which shard this process runs, 0..N-1 (default: RANK under torchrun, "
                        "SLURM_PROCID under srun, else 0); the GPU is LOCAL_RANK / SLURM_LOCALID")


def git_revision() -> Optional[str]:
    """The checkout's commit (with '-dirty' when modified), or None outside git."""
    try:
        rev = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not rev:
            return None
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(args: Any) -> Dict[str, Any]:
    """argv, parsed arguments, git revision, versions and time of this run."""
    from fairseq_kd import __version__

    return {
        "argv": sys.argv,
        "args": {k: v for k, v in sorted(vars(args).items())} if args is not None else None,
        "git_revision": git_revision(),
        "fairseq_kd_version": __version__,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def record_run(out_dir: str, args: Any, name: str = "command.json") -> str:
    """Write the provenance of this run next to what it writes."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(provenance(args), f, indent=2, default=str)
    return path


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "", unit: str = "it"):
    """A tqdm progress bar on stderr, silent when not attached to a terminal
    unless FAIRSEQ_KD_PROGRESS=1 (so CI logs stay readable)."""
    from tqdm import tqdm

    disable = not (sys.stderr.isatty() or os.environ.get("FAIRSEQ_KD_PROGRESS") == "1")
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
