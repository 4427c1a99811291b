"""Weighted mixtures of sources: which source each example of the global stream draws from, and its block.

Example k of the global stream (k = batch * world_size * batch_size + its place in the batch, the key the samplers
already use) draws from the source that a Weyl sequence, frac(k / phi + seed offset), falls into when [0, 1) is cut in
proportion to the weights. Like Megatron's BlendedDataset (a deterministic schedule, not a coin per example) the
share of every source is within a few examples of its weight over any stretch of the stream, and like the samplers'
offsets it is a function of k alone: resuming, and any world size, see the same sources in the same places.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

_PHI_FRACTION = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: the most evenly spread Weyl step
_COUNT_CHUNK = 1 << 22


class SourceSchedule:
    """Source index of every example key, by exact 64-bit integer arithmetic (no float drift at any key)."""

    def __init__(self, weights: Sequence[float], seed: int):
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"mixture weights must be >= 0 and not all zero, got {list(weights)}")
        cumulative = np.cumsum(w / w.sum())[:-1]
        self.thresholds = np.array([min(int(c * 2.0**64), 2**64 - 1) for c in cumulative], dtype=np.uint64)
        self.offset = np.uint64(int(np.random.default_rng([seed, 0x5EED]).integers(0, 2**63)) * 2)
        self.num_sources = w.size

    def sources(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # wrap-around modulo 2^64 is the point
            position = np.asarray(keys, dtype=np.uint64) * _PHI_FRACTION + self.offset
        return np.searchsorted(self.thresholds, position, side="right")

    def counts(self, num_keys: int) -> np.ndarray:
        """Examples of each source among keys [0, num_keys)."""
        total = np.zeros(self.num_sources, dtype=np.int64)
        for start in range(0, num_keys, _COUNT_CHUNK):
            keys = np.arange(start, min(num_keys, start + _COUNT_CHUNK), dtype=np.uint64)
            total += np.bincount(self.sources(keys), minlength=self.num_sources)
        return total


class MixtureBlockSampler:
    """Infinite stream of batches of (source, block offset), starting at `start_batch`, this rank's slice of each
    global batch. Batch b seeds its generator with (seed, b) and draws each source's offsets in source order; with
    one source that is exactly `RandomBlockSampler`'s stream (nanoGPT's get_batch)."""

    def __init__(
        self,
        num_tokens: Sequence[int],
        block_size: int,
        batch_size: int,
        seed: int,
        weights: Sequence[float],
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.schedule = SourceSchedule(weights, seed)
        self.high = np.asarray(num_tokens, dtype=np.int64) - block_size  # offsets in [0, high)
        if (bad := np.flatnonzero((self.high <= 0) & (np.asarray(weights) > 0))).size:
            raise ValueError(f"source {int(bad[0])} has {num_tokens[bad[0]]} tokens, need more than block_size="
                             f"{block_size} to sample blocks")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.start_batch = start_batch

    def global_batch(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.batch_size * self.world_size
        sources = self.schedule.sources(np.arange(b * n, (b + 1) * n, dtype=np.uint64))
        rng = np.random.default_rng([self.seed, b])
        offsets = np.zeros(n, dtype=np.int64)
        for s in range(self.schedule.num_sources):
            where = np.flatnonzero(sources == s)
            if where.size:
                offsets[where] = rng.integers(0, self.high[s], size=where.size)
        return sources, offsets

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        b = self.start_batch
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        while True:
            sources, offsets = self.global_batch(b)
            yield sources[lo:hi].tolist(), offsets[lo:hi].tolist()
            b += 1
