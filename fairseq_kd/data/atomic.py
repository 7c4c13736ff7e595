"""Atomic file writes: a file appears whole under its name, or not at all.

Every result file of the plugin's commands (headers, tokenized text, scores,
statistics) is written through :func:`atomic_open`, so that a killed or failed
run never leaves a half-written file that reads as finished:

    with atomic_open(path) as f:          # f is a temporary file beside path
        json.dump(obj, f)
    # here path holds the whole file (os.replace: atomic on one file system)

Several files that belong together are written with one
:class:`contextlib.ExitStack`: an error while writing any of them removes all
the temporary files and replaces none of the targets.
"""
import contextlib
import os
from typing import IO, Iterator


def temporary_name(path: str) -> str:
    """``DIR/.NAME.tmp-PID``: where :func:`atomic_open` writes ``DIR/NAME`` before
    moving it into place (hidden, beside the target so that ``os.replace`` stays
    on one file system, per process so that two writers do not collide)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", fsync: bool = False, **kw) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a normal exit move it
    to ``path`` (``os.replace``, replacing an older file there), on an exception
    remove it and re-raise, leaving ``path`` as it was.

    ``mode`` is a write mode (``"w"``, ``"wb"``, ``"wt"``, ...); ``kw`` go to
    :func:`open` (e.g. ``encoding="utf-8"``). ``fsync`` flushes the data to disk
    before the rename (for files that mark work as done, such as store headers).
    The parent directory must exist.
    """
    if not mode.startswith("w") or "+" in mode:
        raise ValueError(f"atomic_open writes a whole file: mode must be 'w', 'wt' or 'wb', got {mode!r}")
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **kw) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
