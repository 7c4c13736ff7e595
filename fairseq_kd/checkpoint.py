"""Loading fairseq checkpoints on torch >= 2.6 without switching safe loading off.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and fairseq's
``checkpoint_utils.load_checkpoint_to_cpu`` calls ``torch.load`` without the
argument, so every fairseq checkpoint fails to load. Besides tensors and
plain containers, a fairseq checkpoint pickles:

- ``argparse.Namespace``: ``cfg.model`` of architectures registered the legacy
  way (``transformer``, ``lstm``, ...), and ``args`` of pre-Hydra checkpoints;
- numpy scalars and dtypes: metrics and best scores in checkpoints written by
  some fairseq versions.

:func:`allow_fairseq_checkpoints` adds exactly these to torch's allow-list
(``torch.serialization.add_safe_globals``). Any other type is still refused
by torch, with an error that names it ("Unsupported global: GLOBAL ...").
It runs when the plugin is imported, which ``--user-dir fairseq_kd`` does
before fairseq reads a checkpoint.

A file that is not a checkpoint (a directory, an empty or truncated file, a
text file, a bare state dict) makes ``torch.load`` and fairseq fail with
whatever error the bytes happen to trigger (EOFError, KeyError, RuntimeError
from the zip reader, ...). :func:`load` and :func:`read_fairseq_checkpoint`
look at the file first and raise :class:`CheckpointError` naming it, what is
wrong and what to give instead; the plugin's commands load teachers through
:func:`load_fairseq_state`.
"""
import argparse
import os
import pickle
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .errors import MissingFileError


def fairseq_checkpoint_globals() -> List[object]:
    """The non-tensor types a fairseq checkpoint may pickle."""
    allowed: List[object] = [argparse.Namespace, np.dtype]
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    allowed.append(multiarray.scalar)
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtype classes
    if dtypes is not None:
        allowed += [
            getattr(dtypes, name)
            for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")
            if hasattr(dtypes, name)
        ]
    return allowed


def allow_fairseq_checkpoints() -> None:
    """Let ``torch.load``'s safe (weights-only) unpickler read fairseq checkpoints."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 loads everything anyway
        add_safe_globals(fairseq_checkpoint_globals())


class CheckpointError(ValueError):
    """A file given as a checkpoint is not one: a directory, empty, truncated, not a
    PyTorch file, not a fairseq checkpoint, or holding a type safe loading refuses."""


class RefusedTypeError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint pickles a type outside torch's and this plugin's allow-list."""


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # torch's earlier format starts so
FROM_TRAIN = "give a checkpoint_*.pt that fairseq-train wrote"


def check_file(path: str, what: str = "checkpoint", fix: str = FROM_TRAIN) -> None:
    """Raise unless ``path`` is a file in one of torch.save's formats: FileNotFoundError
    when it does not exist, CheckpointError naming what it is instead, and ``fix``."""
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path} is a directory, not a checkpoint file: {fix}")
    if not os.path.isfile(path):
        raise MissingFileError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    if not head:
        raise CheckpointError(f"{what} {path} is empty (0 bytes; was its writer killed?): {fix}")
    if not (head.startswith(ZIP_MAGIC) or head == LEGACY_MAGIC):
        raise CheckpointError(f"{what} {path} is not a PyTorch checkpoint (it starts with {head[:8]!r}): {fix}")


def load(path: str, map_location="cpu", what: str = "checkpoint", mmap: bool = False, fix: str = FROM_TRAIN):
    """``torch.load`` with the safe unpickler, for the plugin's own files.

    Raises FileNotFoundError for a missing file, :class:`RefusedTypeError` (a
    ``pickle.UnpicklingError``) naming the path and the refused type, and
    :class:`CheckpointError` naming the path for anything else that is not a
    readable PyTorch file; ``what`` names the file in the message, ``fix``
    says what to do. ``mmap``: map the tensors' storage instead of reading it
    (cheap; files in torch's zip format only).
    """
    check_file(path, what, fix)
    mmap = mmap and _is_zip(path)
    try:
        if mmap:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        with open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global:" not in str(e):
            raise CheckpointError(f"{what} {path} is damaged ({_first_line(e)}): {fix}") from e
        refused = str(e).split("Unsupported global:")[-1].split("was not")[0].strip()
        raise RefusedTypeError(
            f"{what} {path}: refused to unpickle {refused or 'an unsupported object'}; "
            f"fairseq checkpoints hold only tensors, containers and "
            f"{', '.join(t.__module__ + '.' + t.__name__ for t in fairseq_checkpoint_globals())}: "
            f"{fix}, or re-save this one without that object (safe loading stays on)"
        ) from e
    except (RuntimeError, EOFError) as e:  # torch's zip reader / unpickler on cut or foreign bytes
        raise CheckpointError(f"{what} {path} is truncated or damaged ({_first_line(e)}): {fix}") from e


def read_fairseq_checkpoint(path: str, what: str = "checkpoint", model_only: bool = False) -> Dict[str, Any]:
    """The state dict of a fairseq checkpoint as saved (tensors memory-mapped when the
    file is in torch's zip format), refusing with :class:`CheckpointError` a file that
    is not one (see :func:`load`) or a PyTorch file without fairseq's ``model`` and
    ``cfg`` / ``args`` (a bare state dict, a Hugging Face ``pytorch_model.bin``).
    ``model_only``: the caller reads only ``model`` (cfg / args may be missing)."""
    state = load(path, what=what, mmap=True)
    if not isinstance(state, dict) or "model" not in state or not (model_only or {"cfg", "args"} & set(state)):
        found = f"keys {', '.join(map(repr, list(state)[:5]))}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{what} {path} is a PyTorch file but not a fairseq checkpoint (it holds {found}; fairseq's have "
            f"'model' and 'cfg' or 'args'): {FROM_TRAIN}"
        )
    return state


def load_fairseq_state(path: str, arg_overrides: Optional[Dict[str, Any]] = None,
                       what: str = "checkpoint") -> Dict[str, Any]:
    """fairseq's ``checkpoint_utils.load_checkpoint_to_cpu`` for a file that
    :func:`read_fairseq_checkpoint` accepts (CheckpointError otherwise)."""
    from fairseq import checkpoint_utils

    read_fairseq_checkpoint(path, what)
    return checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides)


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def _first_line(error: BaseException) -> str:
    """The first sentence of an error's text (torch's run on for several)."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    cut = line.find(". ", 20)
    return line[:cut] if cut > 0 else line
