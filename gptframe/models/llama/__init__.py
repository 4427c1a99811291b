"""Llama (and the Mistral / Qwen2 checkpoints of the same shape): the architecture unit. `model.py` is the network;
`hf.py` maps it to transformers' LlamaForCausalLM, LlamaForSequenceClassification and imports Mistral and Qwen2."""

from __future__ import annotations

import torch.nn as nn

from gptframe.models.llama import hf
from gptframe.models.llama.model import (
    Llama,
    LlamaBlock,
    LlamaConfig,
    LlamaForSequenceClassification,
    LlamaModel,
    RopeScaling,
    flops_per_token,
    matmul_params,
)
from gptframe.registry import ArchitectureSpec, HFAdapter, register_architecture


def backbone(model: nn.Module) -> nn.Module:
    return model.model


def describe(c: LlamaConfig) -> str:
    return (f"({c.n_layer} layers, {c.n_head} heads / {c.n_kv_head} KV heads of {c.head_size}, {c.n_embd} wide, "
            f"SwiGLU {c.intermediate_size}, context {c.block_size}, vocab {c.vocab_size})")


def state_from_hf(state: dict, task: str, where: str, config: LlamaConfig) -> dict:
    """Tying comes from config.json, so an untied LlamaModel directory never gets its head copied from the embedding."""
    return hf.state_from_hf(state, task, where, tied=config.tie_word_embeddings)


SPEC = register_architecture(ArchitectureSpec(
    name="llama",
    config_class=LlamaConfig,
    models={"clm": Llama, "classification": LlamaForSequenceClassification},
    block_class=LlamaBlock,
    backbone=backbone,
    context_length=lambda c: c.block_size,
    flops_per_token=flops_per_token,
    describe=describe,
    hidden_states=lambda llama_model, batch: llama_model(batch["input_ids"]),
    hf=HFAdapter(
        imports=hf.IMPORTS, exports=hf.EXPORTS, base_classes=hf.BASE_CLASSES,
        config_from_hf=hf.config_from_hf, config_to_hf=hf.config_to_hf,
        state_from_hf=state_from_hf, state_to_hf=hf.state_to_hf,
    ),
))

__all__ = [
    "SPEC", "Llama", "LlamaBlock", "LlamaConfig", "LlamaForSequenceClassification", "LlamaModel", "RopeScaling",
    "matmul_params",
]
