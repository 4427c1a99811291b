"""GPT-2 <-> Hugging Face `transformers` (GPT2LMHeadModel, GPT2ForSequenceClassification).

gptframe's GPT uses nanoGPT's names, which are GPT-2's, but GPT-2 stores its projections as `Conv1D` ([in, out]
weights), so those are transposed.
"""

from __future__ import annotations

import math

import torch

from gptframe.errors import CheckpointError
from gptframe.models.gpt.model import GPTConfig

IMPORTS = {
    "GPT2LMHeadModel": "clm",
    "GPT2Model": "clm",  # the LM head is the tied token embedding: nothing is missing
    # transformers pools the last token that is not pad_token_id, gptframe the last one attention_mask keeps: the
    # same on right-padded batches whose texts do not themselves hold the pad token
    "GPT2ForSequenceClassification": "classification",
}
EXPORTS = {"clm": {"lm": "GPT2LMHeadModel"}, "classification": {"classifier": "GPT2ForSequenceClassification"}}
BASE_CLASSES = {"gpt2": "GPT2LMHeadModel"}

GPT_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}  # ours -> transformers
HF_GPT_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
GPT_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which gptframe's GPT uses (as GPT-2)


def config_to_hf(config: GPTConfig) -> dict:
    """transformers.GPT2Config arguments. bias=False has no GPT-2 switch: the export writes zero biases instead."""
    return dict(
        model_type="gpt2", vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=None, activation_function=GPT_ACTIVATIONS[config.activation],
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        layer_norm_epsilon=GPT_LAYER_NORM_EPS, tie_word_embeddings=True,
    )


def config_from_hf(hf: dict, where: str) -> GPTConfig:
    """A GPT2Config (as config.json holds it, defaults as transformers') -> GPTConfig; what gptframe's GPT cannot
    compute exactly is refused."""
    act = hf.get("activation_function", "gelu_new")
    if act not in HF_GPT_ACTIVATIONS:
        raise CheckpointError(f"{where}: activation_function={act!r} is not supported (gptframe's GPT: "
                              f"{', '.join(HF_GPT_ACTIVATIONS)})")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise CheckpointError(f"{where}: n_inner={hf['n_inner']} is not supported (gptframe's GPT: 4 * n_embd)")
    eps = hf.get("layer_norm_epsilon", GPT_LAYER_NORM_EPS)
    if not math.isclose(eps, GPT_LAYER_NORM_EPS, rel_tol=1e-6):
        raise CheckpointError(f"{where}: layer_norm_epsilon={eps} is not supported (gptframe's GPT: 1e-5)")
    for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                           ("add_cross_attention", False)):
        if hf.get(key, supported) != supported:
            raise CheckpointError(f"{where}: {key}={hf[key]} is not supported (gptframe's GPT: {supported})")
    return GPTConfig(
        block_size=hf.get("n_positions", 1024), vocab_size=hf.get("vocab_size", 50257), n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12), n_embd=n_embd, dropout=hf.get("resid_pdrop", 0.1), bias=True,
        activation=HF_GPT_ACTIVATIONS[act],
    )



CONV1D_WEIGHTS = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
GPT_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers saved


def state_to_hf(state: dict[str, torch.Tensor], task: str, hf_class: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.replace("_orig_mod.", "")
        if task == "classification":
            if key.startswith("gpt.lm_head."):
                continue  # the tied embedding again; the classifier has no LM head
            key = key.removeprefix("gpt.")
        out[key] = value.t().contiguous() if key.endswith(CONV1D_WEIGHTS) else value
    return out


def state_from_hf(state: dict[str, torch.Tensor], task: str, where: str, config=None) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith(GPT_BUFFERS):
            continue
        if not key.startswith(("transformer.", "lm_head.", "score.")):
            key = "transformer." + key  # saved from GPT2Model (e.g. the original gpt2 upload)
        out[key] = value.t() if key.endswith(CONV1D_WEIGHTS) else value
    wte = out.get("transformer.wte.weight")
    head = out.pop("lm_head.weight", None)
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise CheckpointError(f"{where}: lm_head.weight differs from the token embedding; gptframe's GPT ties them")
    if wte is not None:
        out["lm_head.weight"] = wte
    if task == "classification":
        out = {k if k.startswith("score.") else "gpt." + k: v for k, v in out.items()}
    return out


def refine_import(config: GPTConfig, state: dict[str, torch.Tensor], exact: dict) -> tuple[GPTConfig, dict]:
    """A bias=False GPT exports zero biases (GPT-2 has no switch); gptframe.json says to drop them again."""
    biases = [k for k in state if k.endswith(".bias")]
    if exact.get("bias") is False and biases and not any(bool(state[k].any()) for k in biases):
        config.bias = False
        return config, {k: v for k, v in state.items() if k not in biases}
    return config, state


def complete_export(config: GPTConfig, state: dict[str, torch.Tensor], hf_state: dict) -> dict[str, torch.Tensor]:
    """Linear and LayerNorm without bias compute exactly what they do with a zero bias."""
    if config.bias:
        return state
    return {**state, **{k: torch.zeros_like(v) for k, v in hf_state.items() if k.endswith(".bias") and k not in state}}
