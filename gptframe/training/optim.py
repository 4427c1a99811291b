"""Optimizer parameter groups, the same rule for every model; the loss scaler an optimizer step runs under."""

from __future__ import annotations

import torch
import torch.nn as nn


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings (dim >= 2); not biases and LayerNorm weights (as nanoGPT and BERT).
    Tied weights appear once: `parameters()` deduplicates them."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def loss_scaler(trainer) -> torch.amp.GradScaler | None:
    """fp16 mixed precision's loss scaler (16-mixed on a GPU), else None."""
    plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
    return getattr(plugin, "scaler", None)
