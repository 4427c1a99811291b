"""GPT-2: the architecture unit. `model.py` is the network; `hf.py` maps it to transformers' GPT-2 classes."""

from __future__ import annotations

import torch.nn as nn

from gptframe.models.flops import palm_flops_per_token
from gptframe.models.gpt import hf
from gptframe.models.gpt.model import GPT, Block, GPTConfig, GPTForSequenceClassification, KVCache
from gptframe.registry import ArchitectureSpec, HFAdapter, register_architecture


def matmul_params(config: GPTConfig, lm_head: bool = True) -> int:
    """Weights that multiply activations (PaLM's N): every Linear, LayerNorm scale and bias, and the tied token
    embedding / LM head once; position embeddings are lookups. lm_head=False (classification): without the token
    embedding too (with no LM head multiplying by it, it is only a lookup)."""
    if config.vocab_size is None:
        raise ValueError("the model config needs its vocab_size set (gptframe sets it from the tokenizer)")
    C = config.n_embd
    # per block: c_attn 3C^2 + attn c_proj C^2 + c_fc 4C^2 + mlp c_proj 4C^2; biases 3C + C + 4C + C;
    # two LayerNorms (weight, and bias when config.bias)
    block = 12 * C * C + (9 * C + 4 * C if config.bias else 2 * C)
    ln_f = 2 * C if config.bias else C
    n = config.n_layer * block + ln_f
    return n + config.vocab_size * C if lm_head else n  # wte, tied to lm_head


def flops_per_token(config: GPTConfig, seq_len: int, lm_head: bool = True) -> float:
    head_dim = config.n_embd // config.n_head
    return palm_flops_per_token(matmul_params(config, lm_head), config.n_layer, config.n_head, head_dim, seq_len)


def backbone(model: nn.Module) -> nn.Module:
    return model.gpt if isinstance(model, GPTForSequenceClassification) else model


def describe(c: GPTConfig) -> str:
    return f"({c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, context {c.block_size}, vocab {c.vocab_size})"


SPEC = register_architecture(ArchitectureSpec(
    name="gpt",
    config_class=GPTConfig,
    models={"clm": GPT, "classification": GPTForSequenceClassification},
    block_class=Block,
    backbone=backbone,
    context_length=lambda c: c.block_size,
    flops_per_token=flops_per_token,
    describe=describe,
    hidden_states=lambda gpt, batch: gpt.hidden_states(batch["input_ids"]),
    hf=HFAdapter(
        imports=hf.IMPORTS, exports=hf.EXPORTS, base_classes=hf.BASE_CLASSES,
        config_from_hf=hf.config_from_hf, config_to_hf=hf.config_to_hf,
        state_from_hf=hf.state_from_hf, state_to_hf=hf.state_to_hf,
        refine_import=hf.refine_import, complete_export=hf.complete_export,
    ),
))

__all__ = ["GPT", "SPEC", "Block", "GPTConfig", "GPTForSequenceClassification", "KVCache", "matmul_params"]
