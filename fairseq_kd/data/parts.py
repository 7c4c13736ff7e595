"""Parts of a sharded offline stage: one layout for every kind of output.

An offline stage run as N shards (``--num-shards N --shard-id I``, or one
process per rank under ``torchrun`` / ``srun``; :mod:`fairseq_kd.data.shards`
says which sentences shard I handles) writes one *part* per shard instead of
its output. The output T is what one process writes: a soft-label store's
directory ``OUT`` (:mod:`fairseq_kd.data.soft_labels`, and any other store
kind), a distilled corpus's split ``OUT/<subset>`` (the files
``OUT/<subset>.*``, :mod:`fairseq_kd.data.distilled_corpus`). Every kind lays
its parts out the same way, beside T::

    T.parts/                          parts_dir(T)
        part-0000I-of-0000N/          part_path(T, N, I): shard I's finished part
            header.json               its record, written last
            ...                       the kind's own files (a store's arrays, a corpus's targets)
        .part-0000I-of-0000N.tmp/     work_path(T, N, I): shard I's part while it is written

So a store ``OUT`` has its parts in ``OUT.parts/``, and the ``train`` split of
a corpus ``OUT`` in ``OUT/train.parts/``.

A shard builds its part in the work folder (a killed store shard resumes there;
a kind that writes its part at once starts it afresh) and :func:`publish`
renames it to the part's name when its ``header.json`` is there, replacing an
older part of that shard (a rerun) only once the new one is whole. Folders
whose names start with a dot are never read as parts.

Every part's ``header.json`` holds, besides the kind's own fields:

- ``kind``: what the part is (``soft_labels``, ``distilled_corpus``, ...);
- ``num_shards``, ``shard_id``: the shard that wrote it (its folder's name);
- ``sentence_range``: [start, end), the sentences of the split it holds;
- ``sentences``: how many sentences the whole split has;
- the settings every part of one output must share (the kind names them:
  K, beam, dictionary and split checksums, teacher hashes...).

``fairseq-kd-merge-shards T`` reads the parts (:func:`read_parts`), checks them
(:func:`check_parts`: the same settings, all N shards there, the ranges cover
the split exactly once) and lets the kind join them into T, equal to what one
process writes.
"""
import json
import os
import shutil
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import array_store
from ..errors import MissingFileError

HEADER = array_store.HEADER  # "header.json": a part's record, present once the part is whole


def parts_dir(output: str) -> str:
    """``T.parts``: where the shards of the output ``T`` write their parts, beside it."""
    return os.path.normpath(output) + ".parts"


def part_name(num_shards: int, shard_id: int) -> str:
    """Folder name of shard ``shard_id`` of ``num_shards``'s part: ``part-00001-of-00004``."""
    return f"part-{shard_id:05d}-of-{num_shards:05d}"


def part_path(output: str, num_shards: int, shard_id: int) -> str:
    """``T.parts/part-0000I-of-0000N``: the finished part of shard I of N of the output T."""
    return os.path.join(parts_dir(output), part_name(num_shards, shard_id))


def work_path(output: str, num_shards: int, shard_id: int) -> str:
    """``T.parts/.part-0000I-of-0000N.tmp``: where that part is written (and a store's
    resumed) until :func:`publish` renames it to :func:`part_path`."""
    return os.path.join(parts_dir(output), f".{part_name(num_shards, shard_id)}.tmp")


def publish(work: str, final: str) -> None:
    """Move the finished part ``work`` (it has ``header.json``) to ``final``, replacing
    an older part there (a rerun shard): the old part stays whole until the new one
    is in place."""
    array_store.read_header(work)  # raises unless the part is finished
    if os.path.exists(final):
        old = f"{final}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, final)


def read_parts(output: str, kind: Optional[str] = None) -> List[Dict[str, Any]]:
    """The headers of the finished parts of the output ``output``, by name, each with
    its folder's ``name`` and ``path`` added.

    Work folders (``.part-...tmp``) and replaced parts (``.old-``) are skipped.
    FileNotFoundError when ``T.parts`` does not exist; ValueError (StoreError)
    naming the folder when there are no finished parts, or a ``part-*`` folder has
    no readable header, a header of another ``kind`` (None: any) or of another
    shard than its name says.
    """
    parent = parts_dir(output)
    if not os.path.isdir(parent):
        raise MissingFileError(f"no parts to merge: {parent} not found")
    parts = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not (name.startswith("part-") and os.path.isdir(path)) or ".old-" in name:
            continue
        if not os.path.exists(os.path.join(path, HEADER)):
            raise array_store.StoreError(f"{path} is not a finished part (no {HEADER}): rerun its shard")
        header = array_store.read_header(path)
        if kind is not None and header.get("kind") != kind:
            raise array_store.StoreError(f"{path} holds a {header.get('kind')!r} part, expected {kind!r}")
        if part_name(header.get("num_shards", 1), header.get("shard_id", 0)) != name:
            raise array_store.StoreError(f"{path}: its header says shard {header.get('shard_id')} of "
                                         f"{header.get('num_shards')}, not {name}")
        parts.append(dict(header, name=name, path=path))
    if not parts:
        raise array_store.StoreError(f"no finished parts in {parent}")
    return parts


def check_cover(ranges: Sequence[Tuple[str, int, int]], n_sentences: int) -> None:
    """Raise ValueError unless the (name, start, end) ranges cover [0, n) exactly once,
    naming the gaps and the overlapping parts."""
    problems = []
    pos, last = 0, None
    for name, start, end in sorted(ranges, key=lambda r: (r[1], r[2])):
        if start > pos:
            problems.append(f"sentences {pos}..{start - 1} are in no part (missing shard before {name})")
        elif start < pos:
            problems.append(f"{name} [{start}, {end}) overlaps {last}")
        pos, last = max(pos, end), name
    if pos < n_sentences:
        problems.append(f"sentences {pos}..{n_sentences - 1} are in no part (missing shard after {last})")
    if problems:
        raise ValueError("; ".join(problems))


def check_parts(parts: Sequence[Mapping[str, Any]], settings: Sequence[str]) -> Dict[str, Any]:
    """Raise ValueError naming every problem that forbids merging ``parts`` (headers as
    :func:`read_parts` gives them); return the settings they share.

    ``settings`` names the header fields every part must share (``sentences``, the
    split's size, among them). Parts whose settings differ from the most common
    ones are named with the differing fields; for every N seen, parts 0..N-1 must
    all be there, N must be one; and the ranges must cover the split's sentences
    exactly once (:func:`check_cover`).
    """
    if not parts:
        raise ValueError("no parts found")
    keys = [json.dumps({k: p.get(k) for k in settings}, sort_keys=True) for p in parts]
    reference = json.loads(Counter(keys).most_common(1)[0][0])
    problems = []
    for part, key in zip(parts, keys):
        if key != json.dumps(reference, sort_keys=True):
            fields = [k for k in sorted(settings) if part.get(k) != reference.get(k)]
            detail = ", ".join(f"{k}: {part.get(k)!r} vs {reference.get(k)!r}" for k in fields)
            problems.append(f"{part['name']} was made with other settings than the other parts ({detail})")
    present: Dict[int, set] = {}
    for part in parts:
        present.setdefault(part["num_shards"], set()).add(part["shard_id"])
    for num_shards, ids in sorted(present.items()):
        missing = [part_name(num_shards, i) for i in range(num_shards) if i not in ids]
        if missing:
            problems.append(f"missing {', '.join(missing)} (rerun those shards)")
    if len(present) > 1:
        problems.append(f"parts of different --num-shards ({', '.join(map(str, sorted(present)))}) are mixed")
    try:
        check_cover([(p["name"], *p["sentence_range"]) for p in parts], reference["sentences"])
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))
    return reference
