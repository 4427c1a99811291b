"""gptframe's Llama against transformers' Llama, Mistral and Qwen2: weights imported and exported with
gptframe.models.llama.hf give the same logits (fp32, 1e-4), with the KV cache and with left-padded batches, the same
greedy generations and the same classifier logits. The reference models are random-init tiny models built from
transformers' own config classes and read back from what save_pretrained writes."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from gptframe.errors import CheckpointError
from gptframe.models.llama.hf import (
    BASE_CLASSES,
    EXPORTS,
    IMPORTS,
    config_from_hf,
    config_to_hf,
    state_from_hf,
    state_to_hf,
)
from gptframe.models.llama.model import Llama, LlamaConfig, LlamaForSequenceClassification, RopeScaling

VOCAB, CONTEXT = 96, 64
TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=CONTEXT, rms_norm_eps=1e-5)
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16)  # short: every band of the scaling is used at head_dim 8
HF_CONFIGS = {
    "llama_gqa_untied": lambda: transformers.LlamaConfig(**TINY, num_key_value_heads=2),
    "llama_mqa_tied_head_dim_12": lambda: transformers.LlamaConfig(**TINY, num_key_value_heads=1, head_dim=12,
                                                                   tie_word_embeddings=True),
    "llama3_rope_scaling": lambda: transformers.LlamaConfig(**TINY, num_key_value_heads=2,
                                                            rope_parameters=LLAMA3_ROPE),
    "mistral_gqa": lambda: transformers.MistralConfig(**TINY, num_key_value_heads=2, sliding_window=None),
    "qwen2_qkv_bias_tied": lambda: transformers.Qwen2Config(**TINY, num_key_value_heads=2, tie_word_embeddings=True,
                                                            rope_parameters={"rope_type": "default",
                                                                             "rope_theta": 1e6}),
}
TOL = 1e-4


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights of the size that makes differences visible (init's std 0.02 gives logits near 0), norm weights
    around 1 (a missed norm weight shows), biases nonzero (a missed bias shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.3 * noise if "norm" in name else 0.3 * noise)
    return model.eval()


def saved(hf_model, tmp_path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and the weights as save_pretrained writes them (tied heads omitted, defaults left out)."""
    hf_model.save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text()), load_file(tmp_path / "model.safetensors")


def imported(hf_model, tmp_path, task: str = "clm", num_labels: int | None = None):
    hf, state = saved(hf_model, tmp_path)
    config = config_from_hf(hf, str(tmp_path))
    model = Llama(config) if task == "clm" else LlamaForSequenceClassification(config, num_labels)
    model.load_state_dict(state_from_hf(state, task, str(tmp_path), tied=config.tie_word_embeddings), strict=True)
    return model.eval()


@pytest.fixture(params=list(HF_CONFIGS))
def pair(request, tmp_path):
    hf_model = randomize(transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[request.param]()))
    return hf_model, imported(hf_model, tmp_path)


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_full_sequence_logits_match(pair):
    hf_model, ours = pair
    ids = tokens(2, 24)
    assert torch.allclose(ours(ids), hf_model(ids).logits, atol=TOL, rtol=0)


@torch.no_grad()
def test_incremental_decoding_with_the_kv_cache_matches(pair):
    hf_model, ours = pair
    ids = tokens(2, 20)
    expected = hf_model(ids).logits
    cache = ours.new_kv_cache(2, max_len=20)
    assert cache.keys.shape[2] == ours.config.n_kv_head  # the cache holds the key/value heads, not n_head
    chunks = [ours(ids[:, :7], cache), ours(ids[:, 7:11], cache)]  # a prefill, then a chunk after a cached prefix
    chunks += [ours(ids[:, t : t + 1], cache) for t in range(11, 20)]
    assert cache.length == 20
    assert torch.allclose(torch.cat(chunks, dim=1), expected, atol=TOL, rtol=0)


def left_padded(lengths: list[int], width: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokens(len(lengths), width, seed=seed)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1
    return ids.masked_fill(mask == 0, 0), mask


def padded_inputs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a decoding loop gives gptframe's model for a left-padded batch: positions counted from each row's first
    real token, and a causal mask that hides the padding."""
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    T = mask.size(1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return position_ids, causal[None, None] & mask.bool()[:, None, None, :]


@torch.no_grad()
def test_left_padded_batch_matches_transformers_with_attention_mask(pair):
    hf_model, ours = pair
    ids, mask = left_padded([12, 5, 9], 12)
    position_ids, attn_mask = padded_inputs(mask)
    expected = hf_model(ids, attention_mask=mask, position_ids=position_ids).logits
    got = ours(ids, position_ids=position_ids, attn_mask=attn_mask)
    assert torch.isfinite(got).all()  # padding rows see only themselves: no NaN leaks into real rows
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=TOL, rtol=0)


@torch.no_grad()
def greedy(model: Llama, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """A plain greedy decoding loop over gptframe's model and KV cache for a left-padded batch."""
    position_ids, attn_mask = padded_inputs(mask)
    cache = model.new_kv_cache(ids.size(0), max_len=ids.size(1) + new_tokens)
    logits = model(ids, cache, position_ids=position_ids, attn_mask=attn_mask)
    keep, next_position, out = mask.bool(), position_ids[:, -1:] + 1, []
    for _ in range(new_tokens):
        token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(token)
        keep = torch.cat([keep, torch.ones_like(token, dtype=torch.bool)], dim=1)
        logits = model(token, cache, position_ids=next_position, attn_mask=keep[:, None, None, :])
        next_position = next_position + 1
    return torch.cat(out, dim=1)


def test_greedy_generation_is_token_identical_to_transformers_generate(pair):
    hf_model, ours = pair
    ids, mask = left_padded([8, 3], 8, seed=3)
    expected = hf_model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                                 eos_token_id=None)[:, ids.size(1) :]
    assert torch.equal(greedy(ours, ids, mask, 12), expected)


@torch.no_grad()
def test_classifier_logits_match_llama_for_sequence_classification(tmp_path):
    config = transformers.LlamaConfig(**TINY, num_key_value_heads=2, num_labels=3, pad_token_id=0)
    hf_model = randomize(transformers.LlamaForSequenceClassification(config))
    ours = imported(hf_model, tmp_path, task="classification", num_labels=3)
    ids, mask = left_padded([10, 4, 7], 10, seed=4)
    ids, mask = ids.flip(1), mask.flip(1)  # right-padded, as gptframe's classification batches are
    expected = hf_model(ids, attention_mask=mask).logits
    assert torch.allclose(ours(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)), expected, atol=TOL,
                          rtol=0)


def exported(ours: torch.nn.Module, task: str):
    hf_class = next(iter(EXPORTS[task].values()))
    kwargs = config_to_hf(ours.config)
    assert kwargs.pop("model_type") == "llama"
    if task == "classification":
        kwargs["num_labels"] = ours.num_labels
    hf_model = getattr(transformers, hf_class)(transformers.LlamaConfig(**kwargs))
    hf_model.load_state_dict(state_to_hf(ours.state_dict(), task, hf_class), strict=True)
    return hf_model.eval()


OUR_CONFIGS = {
    "gqa_untied_llama3": LlamaConfig(block_size=CONTEXT, vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2,
                                     n_embd=32, intermediate_size=48, rope_theta=5e5,
                                     rope_scaling=RopeScaling(original_max_position_embeddings=16)),
    # Qwen2-style q/k/v biases: exported with zero o_proj biases; tied; head_dim 12 != 32 / 4
    "qkv_bias_tied_mqa": LlamaConfig(block_size=CONTEXT, vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=1,
                                     n_embd=32, head_dim=12, intermediate_size=48, attention_bias=True,
                                     tie_word_embeddings=True, rms_norm_eps=1e-6),
}


@pytest.mark.parametrize("name", list(OUR_CONFIGS))
@torch.no_grad()
def test_export_loads_strict_into_transformers_with_the_same_logits(name, tmp_path):
    ours = randomize(Llama(OUR_CONFIGS[name]), seed=5)
    hf_model = exported(ours, "clm")
    ids = tokens(2, 16)
    assert torch.allclose(hf_model(ids).logits, ours(ids), atol=TOL, rtol=0)
    # and through from_pretrained, then back into gptframe
    hf_model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(again(ids).logits, ours(ids), atol=TOL, rtol=0)
    assert type(again).__name__ == BASE_CLASSES["llama"]
    back = imported(again, tmp_path / "back")
    assert torch.allclose(back(ids), ours(ids), atol=TOL, rtol=0)


@torch.no_grad()
def test_classifier_export_loads_strict_with_the_same_logits():
    ours = randomize(LlamaForSequenceClassification(OUR_CONFIGS["qkv_bias_tied_mqa"], num_labels=4), seed=6)
    hf_model = exported(ours, "classification")
    hf_model.config.pad_token_id = 0
    ids, mask = left_padded([9, 6], 9, seed=7)
    ids, mask = ids.flip(1), mask.flip(1)
    assert torch.allclose(hf_model(ids, attention_mask=mask).logits, ours(ids, mask), atol=TOL, rtol=0)


def test_every_import_class_is_a_transformers_class_of_a_known_task():
    assert all(hasattr(transformers, name) for name in IMPORTS)
    assert set(IMPORTS.values()) == set(EXPORTS)
    assert set(BASE_CLASSES.values()) <= set(IMPORTS)


def _config(hf_config) -> dict:
    return hf_config.to_dict()


@pytest.mark.parametrize(
    "hf, field",
    [
        (lambda: _config(transformers.MistralConfig(**TINY, sliding_window=16)), "sliding_window"),
        (lambda: _config(transformers.Qwen2Config(**TINY, use_sliding_window=True, sliding_window=16,
                                                  max_window_layers=1)), "use_sliding_window"),
        (lambda: _config(transformers.LlamaConfig(**TINY, mlp_bias=True)), "mlp_bias"),
        (lambda: _config(transformers.LlamaConfig(**TINY, hidden_act="gelu")), "hidden_act"),
        (lambda: _config(transformers.LlamaConfig(**TINY, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                           "rope_theta": 1e4})), "rope_type"),
        (lambda: _config(transformers.MixtralConfig(**TINY)), "model_type"),
        (lambda: {**_config(transformers.Qwen2Config(**TINY)), "num_experts": 8}, "num_experts"),
        (lambda: _config(transformers.LlamaConfig(**TINY, num_key_value_heads=3)), "n_kv_head"),
        (lambda: {"model_type": "llama", "rope_scaling": {"type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ],
)
def test_unsupported_configs_are_one_error_naming_the_field(hf, field):
    with pytest.raises(CheckpointError, match=field) as error:
        config_from_hf(hf(), "DIR")
    assert str(error.value).startswith("DIR: ") and "\n" not in str(error.value)


def test_full_attention_windows_and_defaults_are_accepted():
    # a window at least as long as the context never binds; Qwen2 without use_sliding_window ignores it
    mistral = config_from_hf(_config(transformers.MistralConfig(**TINY, num_key_value_heads=2,
                                                                            sliding_window=CONTEXT)), "DIR")
    qwen2 = config_from_hf(_config(transformers.Qwen2Config(**TINY, num_key_value_heads=4, sliding_window=16)),
                           "DIR")
    assert (mistral.n_kv_head, qwen2.attention_bias, qwen2.tie_word_embeddings) == (2, True, False)
    # transformers 4 files: rope_theta and rope_scaling at the top level, without the defaults
    old = config_from_hf({"model_type": "llama", "rope_theta": 5e5, "rope_scaling": {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}}, "DIR")
    assert (old.rope_theta, old.rope_scaling.factor, old.n_layer, old.rms_norm_eps) == (5e5, 32.0, 32, 1e-6)


def test_a_nonzero_o_proj_bias_is_refused(tmp_path):
    """transformers' Llama attention_bias=True biases o_proj too: gptframe imports it only when those are zero."""
    hf_model = randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY, attention_bias=True)))
    hf, state = saved(hf_model, tmp_path)
    assert config_from_hf(hf, "DIR").attention_bias
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.o_proj.bias is not zero"):
        state_from_hf(state, "clm", "DIR")


def test_a_tied_checkpoint_with_a_different_lm_head_is_refused():
    state = {"model.embed_tokens.weight": torch.zeros(4, 2), "lm_head.weight": torch.ones(4, 2)}
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        state_from_hf(state, "clm", "DIR", tied=True)
    untied = state_from_hf(state, "clm", "DIR")  # inferred: a separate head
    assert torch.equal(untied["lm_head.weight"], torch.ones(4, 2))


@torch.no_grad()
def test_a_bare_llama_model_directory_imports_as_the_decoder(tmp_path):
    """LlamaModel saves its keys without the `model.` prefix; tied, the LM head is the embedding, nothing missing."""
    base = randomize(transformers.LlamaModel(transformers.LlamaConfig(**TINY, num_key_value_heads=2,
                                                                      tie_word_embeddings=True)))
    hf, state = saved(base, tmp_path)
    assert IMPORTS[hf["architectures"][0]] == "clm" and not any(k.startswith("model.") for k in state)
    ours = Llama(config_from_hf(hf, "DIR"))
    ours.load_state_dict(state_from_hf(state, "clm", "DIR", tied=True), strict=True)
    ids = tokens(2, 10)
    assert torch.allclose(ours.eval().hidden_states(ids), base(ids).last_hidden_state, atol=TOL, rtol=0)
