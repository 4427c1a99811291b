"""The key/value cache decoders share for generation: preallocated, one slot per layer, any number of KV heads."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of the positions seen so far, preallocated for `max_len` positions.

    Shaped [n_layer, batch, n_kv_head, max_len, head_dim]: grouped-query attention caches its n_kv_head heads, not
    n_head. Beam search reorders the batch dimension with `reorder`.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int, device, dtype):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions filled; advanced by the model after all layers

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; {end} were asked for")
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reorder(self, batch_index: torch.Tensor) -> None:
        """Keep rows `batch_index` of the batch (beam search: the beams that survive, in their new order)."""
        self.keys = self.keys.index_select(1, batch_index)
        self.values = self.values.index_select(1, batch_index)
