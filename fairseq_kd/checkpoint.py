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
"""
import argparse
import pickle
from typing import List

import numpy as np
import torch


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


def load(path: str, map_location="cpu"):
    """``torch.load`` with the safe unpickler, for the plugin's own files.

    Raises ``pickle.UnpicklingError`` naming the path and the refused type.
    """
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = str(e).split("Unsupported global:")[-1].split("was not")[0].strip()
        raise pickle.UnpicklingError(
            f"{path}: refused to unpickle {refused or 'an unsupported object'}; "
            f"fairseq checkpoints hold only tensors, containers and "
            f"{', '.join(t.__module__ + '.' + t.__name__ for t in fairseq_checkpoint_globals())}"
        ) from e
