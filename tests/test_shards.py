"""Token-balanced contiguous shards and launcher detection (fairseq_kd.data.shards)."""
import numpy as np
import pytest

from fairseq_kd.data import shards


def test_bounds_are_contiguous_cover_everything_and_balance_tokens():
    rng = np.random.RandomState(0)
    sizes = rng.randint(1, 100, size=1001)
    for n in (1, 2, 3, 7):
        b = shards.shard_bounds(sizes, n)
        assert b[0] == 0 and b[-1] == len(sizes) and (np.diff(b) >= 0).all()
        tokens = [sizes[b[i]:b[i + 1]].sum() for i in range(n)]
        assert sum(tokens) == sizes.sum()
        assert max(tokens) - min(tokens) <= 2 * sizes.max()  # within a sentence or two


def test_balance_is_by_tokens_not_sentences():
    sizes = [100] * 2 + [1] * 200  # 400 tokens: two long sentences weigh 200
    assert shards.shard_range(sizes, 2, 0) == (0, 2)
    assert shards.shard_range(sizes, 2, 1) == (2, 202)


def test_golden_small_case_and_more_shards_than_sentences():
    assert shards.shard_bounds([1, 1, 1, 1], 2).tolist() == [0, 2, 4]
    assert shards.shard_bounds([3, 1], 4).tolist() == [0, 1, 1, 1, 2]
    assert shards.shard_bounds([], 3).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="shard-id"):
        shards.shard_range([1, 2], 2, 2)


def test_one_check_of_a_shard():
    shards.check_shard(3, 2)
    with pytest.raises(ValueError, match=r"^--shard-id must be in \[0, 3\), got 3$"):
        shards.check_shard(3, 3)
    with pytest.raises(ValueError, match=r"^--num-shards must be >= 1, got 0$"):
        shards.check_shard(0, 0)
    with pytest.raises(ValueError, match=r"^--num-shards must be >= 1, got 0$"):
        shards.shard_bounds([1, 2], 0)


def test_shard_from_env():
    assert shards.shard_from_env(env={}) == (1, 0, 0)
    assert shards.shard_from_env(env={"WORLD_SIZE": "4", "RANK": "5", "LOCAL_RANK": "1"}) == (4, 5, 1)
    assert shards.shard_from_env(env={"SLURM_NTASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}) == (3, 2, 0)
    assert shards.shard_from_env(2, 1, env={"WORLD_SIZE": "8", "RANK": "3"}) == (2, 1, 0)
    with pytest.raises(ValueError, match="go together"):
        shards.shard_from_env(num_shards=2, env={})


def test_granularity_puts_boundaries_at_the_nearest_block():
    # 10 sentences in blocks of 3: [0,3) 30 tokens, [3,6) 3, [6,9) 30, [9,10) 1; total 64
    sizes = [10, 10, 10, 1, 1, 1, 10, 10, 10, 1]
    # halves: 32 tokens; block boundaries hold 0, 30, 33, 63, 64 tokens before them: 33 is nearest
    assert shards.shard_bounds(sizes, 2, granularity=3).tolist() == [0, 6, 10]
    # thirds: 21.3 -> 30 (boundary 3), 42.7 -> 33 (boundary 6)
    assert shards.shard_bounds(sizes, 3, granularity=3).tolist() == [0, 3, 6, 10]
    assert shards.shard_range(sizes, 3, 2, granularity=3) == (6, 10)
    # more shards than blocks: some are empty, starts stay multiples of 3, everything covered once
    bounds = shards.shard_bounds(sizes, 6, granularity=3)
    assert bounds[0] == 0 and bounds[-1] == 10 and all(b % 3 == 0 for b in bounds[:-1])
    assert all(a <= b for a, b in zip(bounds, bounds[1:]))
    assert shards.shard_bounds(sizes, 4, granularity=1).tolist() == shards.shard_bounds(sizes, 4).tolist()
    with pytest.raises(ValueError, match="granularity"):
        shards.shard_bounds(sizes, 2, granularity=0)
