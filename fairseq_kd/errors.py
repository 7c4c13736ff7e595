"""Usage errors: one line, exit status 2, no traceback, in every command the plugin runs in.

The plugin's own ``fairseq-kd-*`` commands end a bad input through
``cli._common.run_command``. Inside fairseq's commands (``fairseq-train``,
``fairseq-generate``, ... ``--user-dir fairseq_kd``) the plugin's refusals are
raised from a task, criterion or model being built, where fairseq would print a
traceback and exit 1. They raise :class:`UsageError` instead, and the hook
installed on import (:func:`install_excepthook`) ends the process as argparse
ends one: ``<prog>: error: <message>`` on stderr, exit 2. Every other exception
keeps Python's traceback.
"""
import os
import sys
from typing import Optional

EXIT_USER_ERROR = 2  # argparse's status for a usage error: every command's for bad input


class UsageError(ValueError):
    """The user's options or files are refused: the message names the input and the fix."""


def one_line(text: str, default: str = "error") -> str:
    """``text`` with its lines stripped and joined by spaces (``default`` when empty)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip()) or default


def print_usage_error(prog: str, error: BaseException, text: Optional[str] = None) -> None:
    """Print ``<prog>: error: <text or the error's message>`` on ONE line of stderr, stdout
    flushed first; the caller exits with :data:`EXIT_USER_ERROR`."""
    sys.stdout.flush()
    message = one_line(str(error) if text is None else text, type(error).__name__)
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Make an uncaught :class:`UsageError` end the process on one line with exit 2.

    Chains to the hook it replaces for any other exception; installing twice is a no-op.
    The process ends with ``os._exit`` after flushing stdout and stderr: a refusal
    comes before training, so nothing is left to save.
    """
    previous = sys.excepthook
    if getattr(previous, "_fairseq_kd", False):
        return

    def hook(kind, value, traceback):
        if isinstance(value, UsageError):
            print_usage_error(os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python", value)
            os._exit(EXIT_USER_ERROR)
        previous(kind, value, traceback)

    hook._fairseq_kd = True
    sys.excepthook = hook


class MissingFileError(UsageError, FileNotFoundError):
    """A file or directory the user named (or that a named input implies) does not exist."""
