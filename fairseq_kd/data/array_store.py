"""Memory-mapped array stores aligned with a fairseq split: the common format.

A store is a directory of ``.npy`` arrays (memory-mappable, self-describing)
and a ``header.json``. The soft-label store, the D2GPo prior and the
classifier-logit dump are all stores; each adds its own header fields and
checks on top of this module.

Completion protocol (nothing half-written is ever read as complete):

1. :func:`create` allocates the arrays at their final size and writes
   ``pending.json`` (the header the finished store will have), plus a
   ``done.npy`` boolean array with one flag per work unit (e.g. sentence).
2. The producer fills arrays, flushes them, then sets and flushes the
   matching ``done`` flags (:meth:`PendingStore.mark_done`) - data before
   flags, so a killed run never has a flag without its data.
3. :func:`finish` checks every unit is done, writes ``header.json``
   atomically (:func:`fairseq_kd.data.atomic.atomic_open`) and removes
   ``pending.json`` and ``done.npy``.

A rerun with the same ``pending.json`` resumes (:func:`resume`): units already
flagged are skipped. :func:`open_store` refuses a directory without
``header.json``.
"""
import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..errors import UsageError
from .atomic import atomic_open

HEADER = "header.json"
PENDING = "pending.json"
DONE = "done.npy"


class StoreError(UsageError):
    """A store is missing, incomplete or does not match what reads it."""


def _write_json_atomic(path: str, obj: Dict[str, Any]) -> None:
    with atomic_open(path, fsync=True) as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def _damaged(path: str) -> str:
    """The fix for a damaged file of the store at ``path``."""
    return f"the store {path} is damaged: remove it and rerun the command that wrote it"


def _read_json(path: str) -> Dict[str, Any]:
    """A header (or pending header) as a dict; StoreError when the file is not one."""
    store = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise StoreError(f"{path} is a directory, not a JSON file; {_damaged(store)}")
    try:
        with open(path, encoding="utf-8") as f:
            header = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: a cut or overwritten file
        raise StoreError(f"{path} is not valid JSON ({e}); {_damaged(store)}") from e
    if not isinstance(header, dict):
        raise StoreError(f"{path} holds a JSON {type(header).__name__}, not an object; {_damaged(store)}")
    return header


def _open_array(path: str, name: str, spec: Optional[Dict[str, Any]], mode: str) -> np.memmap:
    """Memory-map array ``name`` of the store at ``path`` (mode "r" or "r+").

    Raises StoreError when its file is missing, not a whole ``.npy`` file (numpy
    would refuse a cut file in mode "r" with "mmap length is greater than file
    size", and in mode "r+" silently extend it with zeros), or has another shape
    or dtype than ``spec`` (the header's ``{"shape", "dtype"}``; None: any).
    """
    file = os.path.join(path, f"{name}.npy")
    if os.path.isdir(file) or not os.path.exists(file):
        what = "is a directory, not an array file" if os.path.isdir(file) else "is missing"
        raise StoreError(f"{path}: array file {name}.npy {what}; {_damaged(path)}")
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            expected = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except ValueError as e:  # numpy on a file without a whole .npy header (empty, cut, overwritten)
        raise StoreError(f"{file} is not a .npy array ({e}); {_damaged(path)}") from e
    size = os.path.getsize(file)
    if size != expected:
        raise StoreError(f"{file} is {'truncated' if size < expected else 'too long'}: {size} bytes, its "
                         f"{list(shape)} {dtype} array needs {expected}; {_damaged(path)}")
    if spec is not None and (list(shape) != list(spec["shape"]) or str(dtype) != spec["dtype"]):
        raise StoreError(f"{file} has shape {list(shape)} {dtype}, header says {spec['shape']} {spec['dtype']}")
    return np.load(file, mmap_mode="r") if mode == "r" else np.lib.format.open_memmap(file, mode=mode)


class PendingStore:
    """A store being written: writable memory maps plus the per-unit done flags."""

    def __init__(self, path: str, header: Dict[str, Any], arrays: Dict[str, np.memmap], done: np.memmap):
        self.path, self.header, self.arrays, self.done = path, header, arrays, done

    def __getitem__(self, name: str) -> np.memmap:
        return self.arrays[name]

    def mark_done(self, units) -> None:
        """Flush the data arrays, then flag ``units`` (indices or a slice) as done."""
        for array in self.arrays.values():
            array.flush()
        self.done[units] = True
        self.done.flush()

    @property
    def n_done(self) -> int:
        return int(self.done.sum())


def create(
    path: str,
    header: Dict[str, Any],
    arrays: Dict[str, Tuple[Tuple[int, ...], str]],
    units: int,
) -> PendingStore:
    """Allocate a new store at ``path`` (which must not hold a finished store).

    Args:
        header: JSON-serializable fields of the finished store (kind, K, checksums...).
        arrays: name -> (shape, numpy dtype string) of each array.
        units: number of work units tracked by ``done`` flags.
    """
    if os.path.exists(os.path.join(path, HEADER)):
        raise StoreError(f"{path} already holds a finished store; remove it or choose another --out")
    os.makedirs(path, exist_ok=True)
    header = dict(header, arrays={k: {"shape": list(s), "dtype": d} for k, (s, d) in arrays.items()})
    maps = {
        name: np.lib.format.open_memmap(os.path.join(path, f"{name}.npy"), mode="w+", dtype=dtype, shape=tuple(shape))
        for name, (shape, dtype) in arrays.items()
    }
    done = np.lib.format.open_memmap(os.path.join(path, DONE), mode="w+", dtype=np.bool_, shape=(units,))
    done.flush()
    _write_json_atomic(os.path.join(path, PENDING), header)  # last: marks a resumable store
    return PendingStore(path, header, maps, done)


def resume(path: str, header: Dict[str, Any]) -> Optional[PendingStore]:
    """Reopen an unfinished store written with the same ``header``; None if there is none.

    Raises StoreError when an unfinished store with a different header is
    there (other arguments, teacher or data): it is never mixed into.
    """
    pending_path = os.path.join(path, PENDING)
    if not os.path.exists(pending_path):
        return None
    pending = _read_json(pending_path)
    wanted = dict(pending, **{k: v for k, v in header.items()})
    if pending != wanted:
        diff = sorted(k for k in header if pending.get(k) != header[k])
        raise StoreError(
            f"{path} holds an unfinished store written with other settings ({', '.join(diff)}); "
            f"rerun with the same arguments to resume it, or remove it"
        )
    maps = {name: _open_array(path, name, spec, "r+") for name, spec in pending["arrays"].items()}
    done = _open_array(path, DONE[: -len(".npy")], None, "r+")
    return PendingStore(path, pending, maps, done)


def finish(store: PendingStore) -> Dict[str, Any]:
    """Publish a fully written store: header.json appears only when all units are done."""
    missing = int((~np.asarray(store.done)).sum())
    if missing:
        raise StoreError(f"{store.path}: {missing} of {len(store.done)} units not written")
    for array in store.arrays.values():
        array.flush()
    _write_json_atomic(os.path.join(store.path, HEADER), store.header)
    os.remove(os.path.join(store.path, PENDING))
    os.remove(os.path.join(store.path, DONE))
    return store.header


def read_header(path: str) -> Dict[str, Any]:
    header_path = os.path.join(path, HEADER)
    if not os.path.exists(header_path):
        if os.path.exists(os.path.join(path, PENDING)):
            raise StoreError(f"{path} is an unfinished store (no {HEADER}); rerun its command to resume it")
        raise StoreError(f"{path} is not a store: {HEADER} not found")
    return _read_json(header_path)


def open_store(path: str, kind: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, np.memmap]]:
    """Open a finished store read-only: (header, name -> memory-mapped array)."""
    header = read_header(path)
    if kind is not None and header.get("kind") != kind:
        raise StoreError(f"{path} holds a {header.get('kind')!r} store, expected {kind!r}")
    arrays = {name: _open_array(path, name, spec, "r") for name, spec in header.get("arrays", {}).items()}
    return header, arrays


def expect(header: Dict[str, Any], field: str, actual: Any, path: str, what: str) -> None:
    """Raise StoreError unless ``header[field] == actual``, naming both values."""
    if header.get(field) != actual:
        raise StoreError(
            f"{path} does not match {what}: {field} is {header.get(field)!r} in the store, {actual!r} here"
        )


def dictionary_checksum(dictionary) -> str:
    """sha256 of a fairseq Dictionary's symbols in order (ids are positions)."""
    import hashlib

    h = hashlib.sha256()
    for symbol in dictionary.symbols:
        h.update(symbol.encode("utf-8") + b"\n")
    return h.hexdigest()


def file_checksum(path: str, chunk: int = 1 << 20) -> str:
    """sha256 of a file (e.g. a teacher checkpoint)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sizes_checksum(sizes) -> str:
    """sha256 of a split's per-sentence lengths (int64), to detect another split."""
    import hashlib

    return hashlib.sha256(np.asarray(sizes, dtype=np.int64).tobytes()).hexdigest()
