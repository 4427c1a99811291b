"""The one place where a plain model is adapted for training: compilation (and, later, sharding).

Models never know about this; Lightning calls it through `configure_model` on every rank.
"""

from __future__ import annotations

import logging

import torch.nn as nn

log = logging.getLogger(__name__)


def parallelize(model: nn.Module, compile: bool = False) -> nn.Module:
    if compile and not getattr(model, "_gptframe_compiled", False):
        # Module.compile() compiles in place: parameter names (and so checkpoints) stay unchanged.
        model.compile()
        model._gptframe_compiled = True
        log.info("model: compiled with torch.compile")
    return model
