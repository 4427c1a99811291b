import numpy as np
import pytest

from data_pipelines.datasets import BlockDataset
from data_pipelines.sampling import EvalBlockSampler, RandomBlockSampler


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_seeded_and_deterministic():
    a = _take(RandomBlockSampler(10_000, 64, 8, seed=1), 20)
    b = _take(RandomBlockSampler(10_000, 64, 8, seed=1), 20)
    c = _take(RandomBlockSampler(10_000, 64, 8, seed=2), 20)
    assert a == b and a != c
    flat = np.array(a)
    assert flat.min() >= 0 and flat.max() < 10_000 - 64
    assert len(set(flat.ravel().tolist())) > 150  # random offsets, not a fixed pattern


def test_ranks_draw_disjoint_shares_of_the_global_batch():
    world = 4
    single = _take(RandomBlockSampler(50_000, 32, 8 * world, seed=7), 10)
    per_rank = [_take(RandomBlockSampler(50_000, 32, 8, seed=7, rank=r, world_size=world), 10) for r in range(world)]
    for step in range(10):
        shares = [per_rank[r][step] for r in range(world)]
        assert sum(shares, []) == single[step]  # ranks together draw exactly the single-process batch
        assert all(shares[i] != shares[j] for i in range(world) for j in range(i + 1, world))
        positions = [(r, k) for r in range(world) for k in range(8)]
        assert len(positions) == len(set(positions))  # each draw belongs to exactly one rank


def test_resume_continues_the_same_stream():
    full = _take(RandomBlockSampler(10_000, 16, 4, seed=3, rank=1, world_size=2), 30)
    resumed = _take(RandomBlockSampler(10_000, 16, 4, seed=3, rank=1, world_size=2, start_batch=17), 13)
    assert resumed == full[17:]


def test_eval_blocks_are_fixed_disjoint_and_cover_the_split():
    all_blocks = EvalBlockSampler(1000, 10, 7)
    starts = sum(list(all_blocks), [])
    assert starts == list(range(0, 990, 10)) and len(all_blocks) == -(-99 // 7)
    ranks = [sum(list(EvalBlockSampler(1000, 10, 7, rank=r, world_size=3)), []) for r in range(3)]
    assert sorted(sum(ranks, [])) == starts and not set(ranks[0]) & set(ranks[1])
    spread = sum(list(EvalBlockSampler(1000, 10, 5, max_blocks=10)), [])
    assert len(spread) == 10 and spread[0] == 0 and spread[-1] == 980  # spread over the whole split


def test_too_small_split_is_rejected():
    with pytest.raises(ValueError, match="need more than block_size"):
        RandomBlockSampler(64, 64, 2, seed=0)


def test_block_dataset_shifts_targets_by_one():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = BlockDataset(tokens, 8)[[0, 50, 91]]
    assert x.shape == y.shape == (3, 8) and x.dtype.is_floating_point is False
    assert x[1].tolist() == list(range(50, 58)) and y[1].tolist() == list(range(51, 59))
    assert y[2].tolist()[-1] == 99


def test_evaluation_shares_are_equal_and_padding_is_ignored():
    from data_pipelines.datasets import IGNORE_INDEX, BlockDataset
    from data_pipelines.sampling import PAD_KEY, rank_share

    # 7 items on 3 ranks: 3 each, two of them padding; every item once over all ranks
    shares = [rank_share(7, r, 3) for r in range(3)]
    assert {len(s) for s in shares} == {3}
    real = sorted(int(k) for s in shares for k in s if k != PAD_KEY)
    assert real == list(range(7)) and sum(int((s == PAD_KEY).sum()) for s in shares) == 2
    # fewer blocks than ranks: every rank still gets a batch (padding), so none skips the evaluation
    lonely = [list(EvalBlockSampler(25, 10, 4, rank=r, world_size=3, with_index=True)) for r in range(3)]
    assert [len(batches) for batches in lonely] == [1, 1, 1]
    assert [keys for (keys, _), in lonely] == [[0], [1], [PAD_KEY]]
    tokens = np.arange(100, dtype=np.uint16)
    x, y = BlockDataset(tokens, 10)[([0, PAD_KEY], [0, 0])]
    assert (y[0] != IGNORE_INDEX).all() and (y[1] == IGNORE_INDEX).all() and x.shape == (2, 10)
