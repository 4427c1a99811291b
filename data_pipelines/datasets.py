"""Map-style datasets over prepared token shards."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100  # the label of positions no loss or metric counts (torch's cross_entropy default)


class BlockDataset(Dataset):
    """Indexed by a *batch* of block offsets: returns (x, y) of shape [B, T], y shifted by one token.

    One memmap read per batch instead of per sample, and no collate step (use with `batch_size=None`). Indexed by
    (keys, offsets) as evaluation samplers yield them, rows with a negative key (padding) get IGNORE_INDEX labels.
    """

    def __init__(self, tokens: np.ndarray, block_size: int):
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.tokens) - self.block_size

    def __getitem__(self, batch: list[int] | tuple[list[int], list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        keys, offsets = batch if isinstance(batch, tuple) else (None, batch)
        t = self.block_size + 1
        blocks = np.stack([self.tokens[o : o + t] for o in offsets]).astype(np.int64)
        blocks = torch.from_numpy(blocks)
        x, y = blocks[:, :-1], blocks[:, 1:].clone()
        if keys is not None:
            y[torch.as_tensor(keys) < 0] = IGNORE_INDEX
        return x, y


class MixtureBlockDataset(Dataset):
    """BlockDataset over several sources. Training batches are (sources, offsets) -> (x, y); evaluation batches are
    (keys, offsets, source) -> (x, y, source ids), all rows from the one source, so a task can score each source."""

    def __init__(self, sources: list[np.ndarray], block_size: int):
        self.blocks = [BlockDataset(tokens, block_size) for tokens in sources]

    def __getitem__(self, batch: tuple) -> tuple[torch.Tensor, ...]:
        if len(batch) == 3:
            keys, offsets, source = batch
            x, y = self.blocks[source][(keys, offsets)]
            return x, y, torch.full((len(offsets),), source, dtype=torch.long)
        sources, offsets = batch
        if len(set(sources)) == 1:  # one source (always, with a single corpus): one read, as BlockDataset
            return self.blocks[sources[0]][offsets]
        rows = [self.blocks[s][[o]] for s, o in zip(sources, offsets, strict=True)]
        return torch.cat([x for x, _ in rows]), torch.cat([y for _, y in rows])
