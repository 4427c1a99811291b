"""Llama <-> Hugging Face `transformers`: configs and state dicts, both ways. Pure functions: no files, and no
`transformers` import (config.json is a dict, the weights a state dict).

Imports LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM (and LlamaForSequenceClassification); exports
LlamaForCausalLM and LlamaForSequenceClassification. gptframe's module names are transformers' Llama names, so the
weights map one to one: only the LM head of tied models and the non-persistent rotary buffers need care.
"""

from __future__ import annotations

import torch

from gptframe.errors import CheckpointError
from gptframe.models.llama.model import LlamaConfig, RopeScaling

# transformers class -> the gptframe task it is imported as
IMPORTS: dict[str, str] = {
    "LlamaForCausalLM": "clm",
    "MistralForCausalLM": "clm",
    "Qwen2ForCausalLM": "clm",
    # the bare decoder: with tied embeddings nothing is missing; untied, the LM head is freshly initialised
    "LlamaModel": "clm",
    # transformers pools the last token that is not pad_token_id, gptframe the last one attention_mask keeps: the
    # same on right-padded batches whose texts do not themselves hold the pad token
    "LlamaForSequenceClassification": "classification",
}
# task -> export head -> transformers class; the first head is the default
EXPORTS: dict[str, dict[str, str]] = {
    "clm": {"lm": "LlamaForCausalLM"},
    "classification": {"classifier": "LlamaForSequenceClassification"},
}
# configs without `architectures`: their model type's causal LM class
BASE_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# transformers' config defaults per model type, where they differ between the three (config.json omits defaults)
HF_DEFAULTS: dict[str, dict] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, max_position_embeddings=2048, attention_bias=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096 * 32,
                    sliding_window=4096),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768),
}
# what the model type's transformers class fixes, whatever config.json says: Qwen2's attention always has q/k/v
# biases (no switch), never an o_proj bias; Mistral's has none
FIXED: dict[str, dict] = {"qwen2": dict(attention_bias=True), "mistral": dict(attention_bias=False)}
COMMON_DEFAULTS = dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.02,
                       attention_dropout=0.0, rope_theta=10000.0, mlp_bias=False, head_dim=None, attention_bias=False)
# fields of mixture-of-experts configs (Mixtral, Qwen2-MoE, ...): any of them set means a model gptframe cannot run
MOE_FIELDS = ("num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
              "shared_expert_intermediate_size")
ROTARY_BUFFER = ".rotary_emb.inv_freq"


# ---------------------------------------------------------------------------------------------------------------------
# configs


def config_from_hf(hf: dict, where: str) -> LlamaConfig:
    """A config.json of model_type llama, mistral or qwen2 (defaults as transformers' config classes) -> LlamaConfig.
    What gptframe's Llama cannot compute exactly is refused with a CheckpointError naming the field."""
    model_type = hf.get("model_type")
    if model_type not in HF_DEFAULTS:
        raise CheckpointError(f"{where}: model_type={model_type!r} is not supported (gptframe's Llama imports "
                              f"{', '.join(HF_DEFAULTS)})")
    given = {k: v for k, v in hf.items() if v is not None}
    get = {**COMMON_DEFAULTS, **HF_DEFAULTS[model_type], **given, **FIXED.get(model_type, {})}.get

    def refuse(field: str, supported: str) -> None:
        raise CheckpointError(f"{where}: {field}={hf.get(field)!r} is not supported (gptframe's Llama: {supported})")

    if get("hidden_act") != "silu":
        refuse("hidden_act", "silu")
    if get("mlp_bias"):
        refuse("mlp_bias", "false")
    if any(hf.get(f) for f in MOE_FIELDS):
        field = next(f for f in MOE_FIELDS if hf.get(f))
        refuse(field, "a dense MLP, no mixture of experts")
    block_size = get("max_position_embeddings")
    _check_full_attention(hf, model_type, get, block_size, refuse)
    n_head = get("num_attention_heads")
    rope_theta, rope_scaling = _rope_from_hf(hf, get("rope_theta"), where)
    try:
        return LlamaConfig(
            block_size=block_size, vocab_size=get("vocab_size"), n_layer=get("num_hidden_layers"), n_head=n_head,
            n_kv_head=get("num_key_value_heads") or n_head, n_embd=get("hidden_size"), head_dim=get("head_dim"),
            intermediate_size=get("intermediate_size"), rms_norm_eps=get("rms_norm_eps"), rope_theta=rope_theta,
            rope_scaling=rope_scaling, attention_bias=bool(get("attention_bias")),
            tie_word_embeddings=bool(get("tie_word_embeddings")), dropout=float(get("attention_dropout")),
            initializer_range=get("initializer_range"),
        )
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: config.json gives an invalid Llama config: {e}") from None


def _check_full_attention(hf: dict, model_type: str, get, block_size: int, refuse) -> None:
    """gptframe's Llama attends to the whole context: a sliding window shorter than it is refused. Qwen2 slides only
    with use_sliding_window, and only in its layer_types' sliding layers (by default those from max_window_layers)."""
    window = get("sliding_window")
    if model_type == "qwen2" and not get("use_sliding_window"):
        window = None
    if window is None or window >= block_size:
        return
    if model_type == "mistral":
        refuse("sliding_window", f"none, or at least max_position_embeddings={block_size}")
    if model_type == "qwen2":
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if i >= get("max_window_layers", 28) else "full_attention"
            for i in range(get("num_hidden_layers"))
        ]
        if "sliding_attention" in layer_types:
            refuse("use_sliding_window", f"false, or a sliding_window of at least max_position_embeddings={block_size}")


def _rope_from_hf(hf: dict, rope_theta: float, where: str) -> tuple[float, RopeScaling | None]:
    """rope_theta and rope_scaling from transformers 5's `rope_parameters` or transformers 4's `rope_theta` +
    `rope_scaling` (whose type key was `type` in older files)."""
    field = "rope_parameters" if hf.get("rope_parameters") is not None else "rope_scaling"
    params = hf.get(field) or {}
    if not isinstance(params, dict) or "full_attention" in params:  # a dict per layer type: not a Llama
        raise CheckpointError(f"{where}: {field}={params!r} is not supported (gptframe's Llama: one dict of the "
                              "default or llama3 rotary parameters)")
    rope_theta = params.get("rope_theta", rope_theta)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(rope_theta), None
    if rope_type != "llama3":
        raise CheckpointError(f"{where}: {field}.rope_type={rope_type!r} is not supported (gptframe's Llama: default "
                              "or llama3)")
    try:
        scaling = RopeScaling(
            factor=float(params["factor"]), low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise CheckpointError(f"{where}: {field} of rope_type llama3 lacks {e.args[0]}") from None
    except ValueError as e:
        raise CheckpointError(f"{where}: {field}: {e}") from None
    return float(rope_theta), scaling


def config_to_hf(config: LlamaConfig) -> dict:
    """transformers.LlamaConfig arguments (model_type "llama"). Qwen2's q/k/v-only biases have no Llama switch:
    attention_bias=True also gives o_proj a bias, which `state_to_hf` writes as zeros (the same function)."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope = {"rope_type": s.rope_type, "rope_theta": config.rope_theta, "factor": s.factor,
                "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings}
    return dict(
        model_type="llama", vocab_size=config.vocab_size, hidden_size=config.n_embd,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head, head_dim=config.head_size,
        hidden_act="silu", max_position_embeddings=config.block_size, initializer_range=config.initializer_range,
        rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=config.tie_word_embeddings, rope_parameters=rope,
        # transformers' Llama has attention dropout only; gptframe's `dropout` also drops residuals and embeddings
        attention_bias=config.attention_bias, attention_dropout=config.dropout, mlp_bias=False,
    )


# ---------------------------------------------------------------------------------------------------------------------
# state dicts

EMBEDDING, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
O_PROJ_BIAS = ".self_attn.o_proj.bias"


def state_from_hf(state: dict[str, torch.Tensor], task: str, where: str, tied: bool | None = None) -> dict[str, torch.Tensor]:
    """A transformers Llama/Mistral/Qwen2 state dict -> gptframe's `Llama` (task clm) or
    `LlamaForSequenceClassification` (task classification) state dict.

    tied: the config's tie_word_embeddings; None infers it (no lm_head.weight saved, or one equal to the embedding).
    A tied model's LM head is its embedding: a saved lm_head.weight that differs from it is refused."""
    out = {}
    for key, value in state.items():
        if key.endswith(ROTARY_BUFFER):
            continue  # recomputed from the config (older transformers saved it)
        if key.startswith(("layers.", "embed_tokens.", "norm.")):
            key = "model." + key  # saved from LlamaModel
        if key.endswith(O_PROJ_BIAS):
            # transformers' Llama attention_bias also gives o_proj a bias; gptframe's has none (Qwen2's layout), so
            # only zero ones, as gptframe's export writes, are dropped
            if value.any():
                raise CheckpointError(f"{where}: {key} is not zero; gptframe's Llama has no o_proj bias (its "
                                      "attention_bias is Qwen2's: q, k and v only)")
            continue
        out[key] = value
    head = out.pop(LM_HEAD, None)
    embedding = out.get(EMBEDDING)
    if tied is None:
        tied = head is None or (embedding is not None and torch.equal(head, embedding))
    if tied and head is not None and embedding is not None and not torch.equal(head, embedding):
        raise CheckpointError(f"{where}: lm_head.weight differs from the token embedding, but tie_word_embeddings is "
                              "true")
    if task == "clm":
        if tied and embedding is not None:
            out[LM_HEAD] = embedding
        elif head is not None:
            out[LM_HEAD] = head
    elif task != "classification":
        raise ValueError(f"gptframe's Llama has no task {task!r}; it imports clm and classification")
    return out


def state_to_hf(state: dict[str, torch.Tensor], task: str, hf_class: str) -> dict[str, torch.Tensor]:
    """gptframe's state dict -> `hf_class`'s (LlamaForCausalLM or LlamaForSequenceClassification), for a strict
    load_state_dict. A model with q/k/v biases (attention_bias) gets the zero o_proj biases transformers' Llama
    has in that case: a zero bias computes exactly what no bias does."""
    if hf_class not in EXPORTS.get(task, {}).values():
        raise ValueError(f"a Llama {task} model does not export as {hf_class}")
    out = {}
    for key, value in state.items():
        key = key.replace("_orig_mod.", "")  # torch.compile'd modules
        if not key.endswith(ROTARY_BUFFER):
            out[key] = value
    for key in [k for k in out if k.endswith(".self_attn.q_proj.bias")]:
        o_proj = key.removesuffix("q_proj.bias") + "o_proj"
        weight = out[o_proj + ".weight"]
        out[o_proj + ".bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return out
