"""Splitting an offline stage (soft-label dump, distilled corpus) into shards.

This module says which sentences a process handles; where it writes them, and
how the parts are checked and joined, is :mod:`fairseq_kd.data.parts`.

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


def check_shard(num_shards: int, shard_id: int = 0) -> None:
    """Raise ValueError (one line, naming the option) unless ``shard_id`` is one of
    ``num_shards`` >= 1 shards: the one check of a shard, wherever it comes from."""
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"--shard-id must be in [0, {num_shards}), got {shard_id}")


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
    check_shard(num_shards)
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
    check_shard(num_shards, shard_id)
    bounds = shard_bounds(sizes, num_shards, granularity)
    return int(bounds[shard_id]), int(bounds[shard_id + 1])


def shard_from_env(
    num_shards: Optional[int] = None,
    shard_id: Optional[int] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Shard:
    """The shard this process runs: explicit options first, else torchrun's or
    Slurm's variables, else the single shard 0 of 1. Not checked here: a command
    calls :func:`check_shard` on it before any work (and :func:`shard_range` does)."""
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
