"""What every fairseq-kd-* command shares: start-up and errors, device and precision, provenance,
progress, logging."""
import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Type

from ..data.atomic import atomic_open
from ..errors import EXIT_USER_ERROR, MissingFileError, print_usage_error

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
        print_usage_error(parser.prog, e, message(args, e) if message else None)
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
        raise MissingFileError(f"{what} not found: {path}")
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


def add_device_arguments(parser: argparse.ArgumentParser, what: str = "the teacher") -> None:
    """``--cpu``, ``--fp16``, ``--bf16`` of every command that runs a model; read them with
    :func:`device_and_dtype`. ``what`` names the model in the help texts."""
    group = parser.add_argument_group("device and precision")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is there")
    half = group.add_mutually_exclusive_group()
    half.add_argument("--fp16", action="store_true", help=f"run {what} in float16 (needs a GPU)")
    half.add_argument("--bf16", action="store_true",
                      help=f"run {what} in bfloat16 (needs a GPU that supports it: Ampere or newer)")


def device_and_dtype(args: argparse.Namespace, local_rank: Optional[int] = None):
    """``(torch.device, torch.dtype)`` from :func:`add_device_arguments`' options; the one policy:

    a GPU when there is one and ``--cpu`` is not given, float32 unless ``--fp16``
    (float16) or ``--bf16`` (bfloat16); half precision needs a GPU, so either
    without one (or with ``--cpu``) is a user error (ValueError), as is ``--bf16``
    on a GPU without bfloat16. ``local_rank`` (a shard's): use GPU
    ``local_rank % device_count`` (one GPU per process of a node).
    """
    import torch

    half = "--fp16" if args.fp16 else "--bf16" if args.bf16 else None
    use_cuda = torch.cuda.is_available() and not args.cpu
    if half and not use_cuda:
        why = "--cpu given" if args.cpu else "none found"
        raise ValueError(f"{half} needs a GPU ({why}): remove {half} to run in float32 on the CPU")
    if not use_cuda:
        return torch.device("cpu"), torch.float32
    if local_rank is not None:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    device = torch.device("cuda", torch.cuda.current_device())
    if args.bf16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--bf16: this GPU ({torch.cuda.get_device_name(device)}) does not support bfloat16: "
                         f"use --fp16")
    return device, torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32


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
    with atomic_open(path) as f:
        json.dump(provenance(args), f, indent=2, default=str)
    return path


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "", unit: str = "it"):
    """A tqdm progress bar on stderr, silent when not attached to a terminal
    unless FAIRSEQ_KD_PROGRESS=1 (so CI logs stay readable)."""
    from tqdm import tqdm

    disable = not (sys.stderr.isatty() or os.environ.get("FAIRSEQ_KD_PROGRESS") == "1")
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
