"""Attention masks every decoder shares: causality, combined with a caller's padding or packed-document mask."""

from __future__ import annotations

import torch


def causal_mask(T: int, past: int, device) -> torch.Tensor:
    """[T, past + T] bool, True = attend: T new positions after `past` cached ones see the prefix and their past."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


def combine_masks(attn_mask: torch.Tensor, T: int, past: int) -> torch.Tensor:
    """The caller's mask (broadcastable to [B, 1, T, past + T]: padding, or documents in a packed row) AND causality.

    Each position may always see itself: a row that sees nothing (a left-padding position) is a softmax over nothing;
    torch's math kernel returns zeros there, fused CUDA kernels have returned NaN (pytorch#103963, #110213), and a NaN
    would reach every real row through 0 * NaN. For every real position this changes nothing.
    """
    causal = causal_mask(T, past, attn_mask.device)
    own = torch.zeros_like(causal).diagonal_scatter(torch.ones(T, dtype=torch.bool, device=attn_mask.device), past)
    return (attn_mask.bool() & causal) | own
