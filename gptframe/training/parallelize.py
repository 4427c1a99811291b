"""The one place where a plain model is adapted for training: activation checkpointing, compilation, FSDP2 sharding.

Models never know about this; Lightning calls `parallelize` through `configure_model` on every rank, after the
process group exists. The order follows torchtitan: checkpoint each transformer block, compile, then `fully_shard`
each block and finally the root, so each block's weights are gathered just before it runs and freed after.
Parameter names never change (no wrapper modules), so checkpoints load into any of these variants.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from gptframe.registry import architectures

log = logging.getLogger(__name__)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The units that are checkpointed, compiled and sharded one by one: each architecture's declared block class."""
    block_classes = tuple(spec.block_class for spec in architectures().values())
    return [m for m in model.modules() if isinstance(m, block_classes)]


def parallelize(
    model: nn.Module,
    *,
    compile: bool = False,
    activation_checkpointing: bool = False,
    data_parallel_mesh=None,
    reshard_after_forward: bool = True,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Adapt `model` in place (idempotent: Lightning calls configure_model again for validate after fit).

    data_parallel_mesh: shard with FSDP2 over this 1-D device mesh (None: no sharding; DDP wraps from outside).
    param_dtype: FSDP's compute dtype for gathered weights (bf16 under bf16-mixed); gradients reduce in fp32.
    """
    if getattr(model, "_gptframe_parallelized", False):
        return model
    blocks = transformer_blocks(model)
    if activation_checkpointing:
        for block in blocks:
            _checkpoint_forward(block)
        log.info("model: activation checkpointing on %d blocks", len(blocks))
    if compile:
        # Module.compile() compiles in place, so parameter names (and checkpoints) stay unchanged. Sharded models
        # compile block by block (FSDP's hooks sit between blocks); others as a whole, which also fuses the head.
        for module in blocks if data_parallel_mesh is not None else [model]:
            module.compile()
        log.info("model: compiled with torch.compile (%s)", "per block" if data_parallel_mesh is not None else "whole")
    if data_parallel_mesh is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
        for block in blocks:
            fully_shard(block, mesh=data_parallel_mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
        # the root holds the embeddings and heads; its weights are needed again at once by backward
        fully_shard(model, mesh=data_parallel_mesh, reshard_after_forward=False, mp_policy=policy)
        log.info("model: FSDP2 over %d ranks (%d blocks + root)", data_parallel_mesh.size(), len(blocks))
    model._gptframe_parallelized = True
    return model


def _checkpoint_forward(block: nn.Module) -> None:
    """Recompute `block` in backward instead of keeping its activations. Overriding the instance's forward (rather
    than wrapping the module, as torch's checkpoint_wrapper does) keeps parameter names, and FSDP's hooks, which sit
    on the module call, still gather the weights before the recomputation."""
    block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
