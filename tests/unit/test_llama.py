"""gptframe's Llama on its own: config validation, the pieces against transformers' (RMSNorm, rotary frequencies),
its two attention paths, the KV cache, meta-device init, and FLOPs per token counted by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from gptframe.models.llama.model import (
    Llama,
    LlamaConfig,
    LlamaForSequenceClassification,
    RopeScaling,
    flops_per_token,
    matmul_params,
    rope_inv_freq,
)


def tiny(**overrides) -> LlamaConfig:
    values = dict(block_size=32, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=40)
    return LlamaConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_head=6, n_kv_head=4, n_embd=36), "model.n_head=6 must be divisible by model.n_kv_head=4"),
        (dict(head_dim=15), "model.head_dim=15 must be even for rotary embeddings"),
        (dict(n_embd=30, n_head=2, n_kv_head=1), "model.head_dim=15 must be even"),  # n_embd // n_head
        (dict(n_embd=30), "model.n_embd=30 must be divisible by model.n_head=4"),
        (dict(arch="gpt"), "model.arch must be 'llama'"),
        (dict(n_kv_head=0), "model.n_kv_head must be >= 1"),
        (dict(dropout=1.0), "model.dropout"),
    ],
)
def test_invalid_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_rope_scaling_accepts_only_llama3():
    with pytest.raises(ValueError, match="model.rope_scaling.rope_type must be 'llama3'"):
        RopeScaling(rope_type="yarn")


def test_config_is_an_omegaconf_structured_config():
    schema = OmegaConf.structured(LlamaConfig)
    merged = OmegaConf.merge(schema, {"n_layer": 3, "head_dim": 16, "rope_scaling": {"factor": 32.0}})
    config = OmegaConf.to_object(merged)
    assert isinstance(config, LlamaConfig) and isinstance(config.rope_scaling, RopeScaling)
    assert (config.n_layer, config.head_size, config.rope_scaling.factor) == (3, 16, 32.0)
    with pytest.raises(ConfigKeyError, match="n_layr"):
        OmegaConf.merge(schema, {"n_layr": 3})


def test_rmsnorm_computes_what_transformers_llama_rmsnorm_does():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0)) * 4
    theirs = LlamaRMSNorm(32, eps=1e-5)
    torch.nn.init.normal_(theirs.weight)
    ours = Llama(tiny()).model.norm
    ours.weight.data.copy_(theirs.weight)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6, rtol=0)


def test_rotary_frequencies_are_transformers_for_llama31_scaling():
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)
    hf = HFLlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64, rope_parameters=rope)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = tiny(n_embd=2048, n_head=32, n_kv_head=8, head_dim=64, rope_theta=500000.0, rope_scaling=RopeScaling())
    assert torch.equal(rope_inv_freq(ours), expected)


@torch.no_grad()
def test_explicit_causal_mask_gives_what_the_fused_grouped_query_path_gives():
    """Without a mask the model uses SDPA's enable_gqa; with one it repeats the key/value heads."""
    model = Llama(tiny(n_kv_head=1)).eval()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    assert torch.allclose(model(ids, attn_mask=causal), model(ids), atol=1e-6, rtol=0)


@torch.no_grad()
def test_kv_cache_holds_the_key_value_heads_and_advances_after_all_layers():
    model = Llama(tiny(head_dim=6)).eval()
    cache = model.new_kv_cache(3, max_len=10)
    assert cache.keys.shape == (2, 3, 2, 10, 6)  # n_layer, batch, n_kv_head, max_len, head_dim
    model(torch.zeros(3, 4, dtype=torch.long), cache)
    assert cache.length == 4
    with pytest.raises(ValueError, match="holds 10 positions"):
        model(torch.zeros(3, 7, dtype=torch.long), cache)


def test_sequence_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="exceeds block_size=32"):
        Llama(tiny())(torch.zeros(1, 33, dtype=torch.long))


def test_tied_embeddings_are_one_parameter_counted_once():
    tied, untied = Llama(tiny(tie_word_embeddings=True)), Llama(tiny())
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert untied.num_params() - tied.num_params() == 50 * 32
    assert tied.num_params(non_embedding=True) == tied.num_params()  # the embedding is the LM head's matmul
    assert untied.num_params(non_embedding=True) == untied.num_params() - 50 * 32


def test_a_training_step_reaches_every_parameter_and_dropout_acts_in_train_mode():
    model = Llama(tiny(dropout=0.5, attention_bias=True))
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(2))
    logits = model(ids)
    F.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        assert not torch.allclose(model(ids), logits)  # another dropout mask
        model.eval()
        assert torch.equal(model(ids), model(ids))


@torch.no_grad()
def test_a_bf16_model_keeps_its_rotary_frequencies_in_fp32():
    config = tiny(block_size=4096, rope_theta=5e5)
    model = Llama(config).to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(model.model.rotary_emb.inv_freq, rope_inv_freq(config))
    cos, _ = model.model.rotary_emb(torch.tensor([[4000]]), torch.bfloat16)
    angles = 4000 * rope_inv_freq(config).double()
    assert torch.allclose(cos[0, 0, : angles.numel()].double(), angles.cos(), atol=1e-2)  # bf16 output rounding only


@torch.no_grad()
def test_a_meta_device_model_materialised_with_reset_parameters_is_complete():
    """How FSDP builds large models: on the meta device, then to_empty + reset_parameters; the rotary buffer has no
    parameters to reset and is recomputed on to_empty."""
    config = tiny(rope_scaling=RopeScaling(original_max_position_embeddings=16))
    with torch.device("meta"):
        model = Llama(config)
    model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    assert torch.equal(model.model.rotary_emb.inv_freq, rope_inv_freq(config))
    assert torch.isfinite(model(torch.zeros(1, 5, dtype=torch.long))).all()


@torch.no_grad()
def test_classifier_pools_the_last_real_token_of_right_padded_rows():
    model = LlamaForSequenceClassification(tiny(), num_labels=3).eval()
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    batch = model(ids, attention_mask=mask)
    alone = model(ids[1:, :5])
    assert torch.allclose(batch[1], alone[0], atol=1e-6) and batch.shape == (2, 3)


def hand_counted_flops_per_token(c: LlamaConfig, T: int, lm_head: bool = True) -> float:
    """Every matmul of one training step on one sequence of T tokens, as m * n * k multiply-adds, 2 FLOPs each, x3
    for forward + backward, per token; plus gptframe's convention for GPT-2 (nanoGPT's, the PaLM formula's N counts
    every parameter): 6 FLOPs per token per RMSNorm weight and bias too."""
    C, H, K, D, inner, V = c.n_embd, c.n_head, c.n_kv_head, c.head_size, c.intermediate_size, c.vocab_size
    per_layer = [
        (T, C, H * D),  # q_proj
        (T, C, K * D),  # k_proj
        (T, C, K * D),  # v_proj
        *[(T, D, T)] * H,  # q @ k^T, per query head
        *[(T, T, D)] * H,  # scores @ v, per query head
        (T, H * D, C),  # o_proj
        (T, C, inner),  # gate_proj
        (T, C, inner),  # up_proj
        (T, inner, C),  # down_proj
    ]
    matmuls = per_layer * c.n_layer + ([(T, C, V)] if lm_head else [])  # lm_head
    multiply_adds = sum(m * n * k for m, n, k in matmuls)
    norms_and_biases = c.n_layer * (2 * C + ((H + 2 * K) * D if c.attention_bias else 0)) + C
    return 3 * 2 * multiply_adds / T + 6 * norms_and_biases


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(n_kv_head=1, head_dim=12, attention_bias=True), dict(tie_word_embeddings=True, n_kv_head=4)],
)
@pytest.mark.parametrize("lm_head", [True, False])
def test_flops_per_token_equals_the_hand_count(overrides, lm_head):
    config = tiny(**overrides)
    assert flops_per_token(config, 24, lm_head=lm_head) == hand_counted_flops_per_token(config, 24, lm_head)


def test_matmul_params_are_the_models_non_embedding_parameters():
    for config in (tiny(), tiny(tie_word_embeddings=True, head_dim=10, attention_bias=True)):
        assert matmul_params(config) == Llama(config).num_params(non_embedding=True)
        assert matmul_params(config, lm_head=False) == LlamaForSequenceClassification(config, 2).num_params(
            non_embedding=True) - 2 * config.n_embd  # the score head is left out


def test_llama_micro_has_gpt_micros_parameters():
    from omegaconf import OmegaConf as OC

    from gptframe.models.gpt import GPT, GPTConfig

    gpt_values = OC.to_container(OC.load("conf/model/gpt_micro.yaml"))
    gpt_values.pop("defaults", None)
    gpt = GPT(GPTConfig(**gpt_values, vocab_size=2048))
    llama = Llama(LlamaConfig(**_preset("llama_micro"), vocab_size=2048))
    assert llama.config.block_size == gpt.config.block_size
    # equal but for GPT's position embedding (both tie the token embedding; RMSNorm and bias-free LayerNorm both
    # hold one weight vector)
    assert gpt.num_params() - llama.num_params() == gpt.transformer.wpe.weight.numel()


@pytest.mark.parametrize("name", ["smollm_135m", "llama3_1b"])
def test_published_shapes_count_what_transformers_counts(name):
    """Built on the meta device (no memory): the same parameters as transformers' LlamaForCausalLM of the exported
    config (SmolLM-135M: 134,515,008; Llama-3.2-1B: 1,235,814,400 on their model cards)."""
    import transformers

    from gptframe.models.llama.hf import config_to_hf

    config = LlamaConfig(**_preset(name))
    kwargs = config_to_hf(config)
    kwargs.pop("model_type")
    with torch.device("meta"):
        ours = Llama(config)
        theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters())
    assert matmul_params(config) == ours.num_params(non_embedding=True)


def _preset(name: str) -> dict:
    """A conf/model preset's values (the one place presets live)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / f"{name}.yaml"))
    values.pop("defaults")
    return values
