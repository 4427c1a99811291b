"""Map-style datasets over prepared token shards."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class BlockDataset(Dataset):
    """Indexed by a *batch* of block offsets: returns (x, y) of shape [B, T], y shifted by one token.

    One memmap read per batch instead of per sample, and no collate step (use with `batch_size=None`).
    """

    def __init__(self, tokens: np.ndarray, block_size: int):
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.tokens) - self.block_size

    def __getitem__(self, offsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.block_size + 1
        blocks = np.stack([self.tokens[o : o + t] for o in offsets]).astype(np.int64)
        blocks = torch.from_numpy(blocks)
        return blocks[:, :-1], blocks[:, 1:]
