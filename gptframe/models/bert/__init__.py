"""BERT: the architecture unit. `model.py` is the network; `hf.py` maps it to transformers' BERT classes."""

from __future__ import annotations

import torch.nn as nn

from gptframe.models.bert import hf
from gptframe.models.bert.model import (
    BertConfig,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLayer,
    BertModel,
)
from gptframe.models.flops import palm_flops_per_token
from gptframe.registry import ArchitectureSpec, HFAdapter, register_architecture


def matmul_params(config: BertConfig, lm_head: bool = True) -> int:
    """PaLM's N for BERT: every weight but the embedding lookups (position, token-type; word embeddings too when
    there is no MLM decoder multiplying by them, lm_head=False). The pooler (and NSP head) run once per sequence,
    not per token; they are counted, as in the model's parameter count (0.5% of BERT-base)."""
    if config.vocab_size is None:
        raise ValueError("the model config needs its vocab_size set (gptframe sets it from the tokenizer)")
    hidden, inner = config.hidden_size, config.intermediate_size
    # per layer: query, key, value, attention output (H^2 + H each), intermediate (H*I + I), output (I*H + H),
    # two LayerNorms (2H each)
    layer = 4 * (hidden * hidden + hidden) + (hidden * inner + inner) + (inner * hidden + hidden) + 4 * hidden
    embeddings_ln = 2 * hidden
    pooler = hidden * hidden + hidden
    n = embeddings_ln + config.num_hidden_layers * layer + pooler
    if not lm_head:
        return n
    mlm_head = (hidden * hidden + hidden) + 2 * hidden + config.vocab_size  # transform, its LayerNorm, bias
    nsp_head = 2 * hidden + 2
    return n + config.vocab_size * hidden + mlm_head + nsp_head  # word embeddings, tied to the MLM decoder


def flops_per_token(config: BertConfig, seq_len: int, lm_head: bool = True) -> float:
    heads = config.num_attention_heads
    return palm_flops_per_token(
        matmul_params(config, lm_head), config.num_hidden_layers, heads, config.hidden_size // heads, seq_len
    )


def backbone(model: nn.Module) -> nn.Module:
    return model.bert


def hidden_states(bert: BertModel, batch: dict) -> object:
    hidden, _ = bert(batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"))
    return hidden


def describe(c: BertConfig) -> str:
    return (f"({c.num_hidden_layers} layers, {c.num_attention_heads} heads, {c.hidden_size} wide, "
            f"{c.max_position_embeddings} positions, vocab {c.vocab_size})")


SPEC = register_architecture(ArchitectureSpec(
    name="bert",
    config_class=BertConfig,
    models={"mlm": BertForPreTraining, "classification": BertForSequenceClassification,
            "question_answering": BertForQuestionAnswering, "token_classification": BertForTokenClassification},
    block_class=BertLayer,
    backbone=backbone,
    context_length=lambda c: c.max_position_embeddings,
    flops_per_token=flops_per_token,
    describe=describe,
    hidden_states=hidden_states,
    causal=False,
    hf=HFAdapter(
        imports=hf.IMPORTS, exports=hf.EXPORTS, base_classes=hf.BASE_CLASSES,
        config_from_hf=hf.config_from_hf, config_to_hf=hf.config_to_hf,
        state_from_hf=hf.state_from_hf, state_to_hf=hf.state_to_hf, may_be_missing=hf.MAY_BE_MISSING,
        special_token_ids=hf.special_token_ids, export_kwargs=hf.export_kwargs,
        import_model_kwargs=hf.import_model_kwargs,
    ),
))

__all__ = [
    "SPEC", "BertConfig", "BertForPreTraining", "BertForQuestionAnswering", "BertForSequenceClassification",
    "BertForTokenClassification", "BertLayer", "BertModel",
    "matmul_params",
]
