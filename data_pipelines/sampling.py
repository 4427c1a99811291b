"""Seeded, rank-aware, resumable samplers of block start offsets.

Training draws batch `b` of the *global* stream from a generator seeded by (seed, b): world_size * batch_size offsets,
of which rank r takes its own slice. So ranks draw different samples, the union over ranks is the same whatever the
world size (DDP at equal global batch sees the single-process batches), and resuming at batch b needs no replay.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class RandomBlockSampler:
    """Infinite stream of batches of random block offsets (as nanoGPT's get_batch), starting at `start_batch`."""

    def __init__(
        self,
        num_tokens: int,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        with_index: bool = False,
    ):
        if num_tokens <= block_size:
            raise ValueError(f"need more than block_size={block_size} tokens to sample blocks, have {num_tokens}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.high = num_tokens - block_size  # offsets in [0, high): x = [o, o+T), y = [o+1, o+T+1)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        # yield (example keys, offsets): a key numbers an example in the global stream, the same whatever the world
        # size, so example builders that seed from it (masking) give DDP ranks exactly the single-process examples
        self.with_index = with_index

    def global_batch(self, b: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, b])
        return rng.integers(0, self.high, size=self.batch_size * self.world_size)

    def __iter__(self) -> Iterator:
        b = self.start_batch
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        while True:
            offsets = self.global_batch(b)[lo:hi].tolist()
            if self.with_index:
                first = b * self.batch_size * self.world_size + lo
                yield list(range(first, first + len(offsets))), offsets
            else:
                yield offsets
            b += 1


PAD_KEY = -1  # the key of a padding item: evaluated like the others, counted by no metric


def rank_share(num_items: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's item indices for evaluation: every world_size-th item from `rank`, padded with PAD_KEY to
    ceil(num_items / world_size). Every rank then runs the same number of batches, which sharded models (each
    forward gathers weights from all ranks) and the metric sync at the end need; padding counts for nothing."""
    share = np.arange(rank, num_items, world_size)
    return np.concatenate([share, np.full(-(-num_items // world_size) - share.size, PAD_KEY, dtype=np.int64)])


class EvalBlockSampler:
    """Fixed, non-overlapping blocks for evaluation: all of them, or `max_blocks` spread evenly over the split.

    The same blocks every evaluation, so val loss is comparable across steps and runs; ranks take disjoint shares of
    equal length (`rank_share`). with_index: yield (keys, offsets), a key being the block's place in the split, or
    PAD_KEY for padding (whose labels the datasets then ignore); without, padding is left out (single-process use).
    """

    def __init__(
        self,
        num_tokens: int,
        block_size: int,
        batch_size: int,
        max_blocks: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        with_index: bool = False,
    ):
        self.with_index = with_index
        starts = np.arange(0, num_tokens - block_size, block_size)
        if starts.size == 0:
            raise ValueError(f"need more than block_size={block_size} tokens to evaluate, have {num_tokens}")
        if max_blocks is not None and max_blocks < starts.size:
            starts = starts[np.linspace(0, starts.size - 1, max_blocks).round().astype(np.int64)]
        keys = rank_share(starts.size, rank, world_size)
        if not with_index:
            keys = keys[keys != PAD_KEY]
        self.keys = keys
        self.starts = starts[np.maximum(keys, 0)]  # padding reads the first block, for its shape only
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def __iter__(self) -> Iterator:
        for i in range(0, len(self.starts), self.batch_size):
            offsets = self.starts[i : i + self.batch_size].tolist()
            yield (self.keys[i : i + self.batch_size].tolist(), offsets) if self.with_index else offsets
