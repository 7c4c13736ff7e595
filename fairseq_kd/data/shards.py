"""Splitting an offline stage (soft-label dump, distilled corpus) into shards.

Shard I of N processes a contiguous range of sentences [start, end) of the
split, chosen so that every shard holds about the same number of tokens (not
sentences): long and short sentences cost differently. Ranges depend only on
the split's sizes and N, so every process computes the same partition with no
communication, and a shard that dies can be rerun alone.

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK) or Slurm's ``srun``
(SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID) each process finds its shard and
its GPU from the environment, as ``fairseq-train`` does.
"""
import os
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np


class Shard(NamedTuple):
    num_shards: int
    shard_id: int
    local_rank: int  # which GPU of this node (0 without a launcher)


def shard_bounds(sizes: Sequence[int], num_shards: int, granularity: int = 1) -> np.ndarray:
    """num_shards + 1 sentence boundaries b with shard i = [b[i], b[i+1]).

    Boundary k (0 < k < N) is the first sentence whose cumulative token count
    (itself included) reaches k/N of the total, so every shard holds about
    total/N tokens. Contiguous, in order, covering every sentence once; a
    shard may be empty when there are fewer sentences than shards.

    With ``granularity`` G > 1 the split is cut into blocks of G sentences
    (the last may be shorter) and boundary k is the block boundary nearest to
    k/N of the tokens: shard starts are multiples of G, so a stage that
    batches within blocks forms the same batches in every shard as in one
    process.
    """
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    if granularity < 1:
        raise ValueError(f"the shard granularity must be >= 1 sentence, got {granularity}")
    sizes = np.asarray(sizes, dtype=np.int64)
    n = len(sizes)
    if granularity > 1:  # the block boundary nearest to each k/N of the tokens
        blocks = np.add.reduceat(sizes, np.arange(0, n, granularity)) if n else sizes
        before = np.concatenate([[0], np.cumsum(blocks)])  # tokens before block b, b = 0..blocks
        targets = before[-1] * np.arange(1, num_shards) / num_shards
        hi = np.searchsorted(before, targets, side="left")
        lo = np.maximum(hi - 1, 0)
        nearest = np.where(targets - before[lo] <= before[np.minimum(hi, len(blocks))] - targets, lo, hi)
        bounds = np.maximum.accumulate(np.concatenate([[0], nearest, [len(blocks)]]).astype(np.int64))
        return np.minimum(bounds * granularity, n)
    cum = np.cumsum(sizes)
    total = int(cum[-1]) if len(cum) else 0
    targets = total * np.arange(1, num_shards) / num_shards
    inner = np.searchsorted(cum, targets, side="left") + 1 if total else np.zeros(num_shards - 1, np.int64)
    bounds = np.concatenate([[0], np.minimum(inner, n), [n]]).astype(np.int64)
    return np.maximum.accumulate(bounds)


def shard_range(sizes: Sequence[int], num_shards: int, shard_id: int, granularity: int = 1) -> Tuple[int, int]:
    """(start, end) sentence range of shard ``shard_id`` of ``num_shards`` (see :func:`shard_bounds`)."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"--shard-id must be in [0, {num_shards}), got {shard_id}")
    bounds = shard_bounds(sizes, num_shards, granularity)
    return int(bounds[shard_id]), int(bounds[shard_id + 1])


def shard_from_env(
    num_shards: Optional[int] = None,
    shard_id: Optional[int] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Shard:
    """The shard this process runs: explicit options first, else torchrun's or
    Slurm's variables, else the single shard 0 of 1."""
    env = os.environ if env is None else env
    if num_shards is not None or shard_id is not None:
        if num_shards is None or shard_id is None:
            raise ValueError("--num-shards and --shard-id go together")
        local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
        return Shard(num_shards, shard_id, local)
    for world, rank, local in (
        ("WORLD_SIZE", "RANK", "LOCAL_RANK"),
        ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
    ):
        if world in env and rank in env:
            return Shard(int(env[world]), int(env[rank]), int(env.get(local, 0)))
    return Shard(1, 0, 0)


def part_name(shard: Shard) -> str:
    """Folder name of a shard's part: ``part-00001-of-00004``."""
    return f"part-{shard.shard_id:05d}-of-{shard.num_shards:05d}"


def replace_dir(tmp: str, final: str) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one there
    (a rerun shard): the old part stays whole until the new one is in place."""
    import shutil

    if os.path.exists(final):
        old = f"{final}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


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


def check_parts(parts: Sequence[Mapping], n_sentences: int) -> None:
    """Raise ValueError naming every problem that forbids merging ``parts``.

    Each part is a mapping with ``name``, ``shard`` ([id, N]), ``range``
    ([start, end)) and ``settings`` (whatever must be equal across parts: K,
    passes, beam, dictionary and split checksums, teacher hashes...). Parts
    whose settings differ from the most common ones are named with the
    differing fields; then the ranges must cover [0, n) exactly once
    (:func:`check_cover`), and for every N seen, parts 0..N-1 must all be there.
    """
    import json
    from collections import Counter

    problems = []
    if not parts:
        raise ValueError("no parts found")
    keys = [json.dumps(p["settings"], sort_keys=True) for p in parts]
    reference = json.loads(Counter(keys).most_common(1)[0][0])
    for part, key in zip(parts, keys):
        if json.loads(key) != reference:
            fields = sorted(k for k in set(reference) | set(part["settings"])
                            if reference.get(k) != part["settings"].get(k))
            detail = ", ".join(f"{k}: {part['settings'].get(k)!r} vs {reference.get(k)!r}" for k in fields)
            problems.append(f"{part['name']} was made with other settings than the other parts ({detail})")
    present = {}
    for part in parts:
        shard_id, num_shards = part["shard"]
        present.setdefault(num_shards, set()).add(shard_id)
    for num_shards, ids in sorted(present.items()):
        missing = [part_name(Shard(num_shards, i, 0)) for i in range(num_shards) if i not in ids]
        if missing:
            problems.append(f"missing {', '.join(missing)} (rerun those shards)")
    if len(present) > 1:
        problems.append(f"parts of different --num-shards ({', '.join(map(str, sorted(present)))}) are mixed")
    try:
        check_cover([(p["name"], p["range"][0], p["range"][1]) for p in parts], n_sentences)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))
