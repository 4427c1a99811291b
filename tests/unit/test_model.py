import math

import pytest
import torch

from gptframe.inference.generate import filter_logits, generate_tokens
from gptframe.models.gpt import GPT, GPTConfig
from gptframe.training.optim import decay_param_groups


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    model = _model()
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 50
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_kv_cache_forward_equals_full_forward():
    model = _model()
    idx = torch.randint(0, 50, (3, 12))
    full = model(idx)
    cache = model.new_kv_cache(3)
    parts = [model(idx[:, :5], cache), model(idx[:, 5:9], cache), model(idx[:, 9:10], cache), model(idx[:, 10:], cache)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("new_tokens", [8, 40])  # 40 runs past block_size=16: the window slides
def test_kv_cache_generation_equals_full_recomputation(new_tokens):
    model = _model()
    prompt = [3, 1, 4, 1, 5]
    cached = torch.stack(list(generate_tokens(model, prompt, new_tokens, do_sample=False, use_cache=True)), 1)
    full = torch.stack(list(generate_tokens(model, prompt, new_tokens, do_sample=False, use_cache=False)), 1)
    assert cached.tolist() == full.tolist()
    # and the naive loop (nanoGPT's generate): crop to block_size, full forward, argmax
    seq = torch.tensor([prompt])
    for _ in range(new_tokens):
        seq = torch.cat([seq, model(seq[:, -16:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert seq[0, len(prompt) :].tolist() == cached[0].tolist()


def test_sampling_is_seeded_and_respects_vocab_and_eos():
    model = _model()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = list(generate_tokens(model, [1], 20, do_sample=True, top_k=10, generator=g(), num_samples=3, vocab_size=40))
    b = list(generate_tokens(model, [1], 20, do_sample=True, top_k=10, generator=g(), num_samples=3, vocab_size=40))
    assert [t.tolist() for t in a] == [t.tolist() for t in b]
    assert max(max(t.tolist()) for t in a) < 40  # padded vocab entries are never produced
    first = int(next(generate_tokens(model, [1], 1, do_sample=False)))
    stopped = list(generate_tokens(model, [1], 20, do_sample=False, eos_id=first))
    assert len(stopped) == 1


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, 1.0, 2, 1.0)) == [True, True, False, False, False]
    assert kept(filter_logits(logits, 1.0, None, 0.6)) == [True, True, False, False, False]
    assert kept(filter_logits(logits, 1.0, None, 0.5)) == [True, False, False, False, False]
    shuffled = logits[:, [3, 0, 4, 1, 2]]
    assert kept(filter_logits(shuffled, 1.0, None, 0.6)) == [False, True, False, True, False]


def test_gpt2_124m_has_the_known_parameter_count():
    cfg = GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, bias=True)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == 124_439_808  # GPT-2 small, tied embeddings
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt2_initialisation_scales_residual_projections():
    model = _model(n_layer=8, n_embd=256, n_head=4)
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.001
    groups = decay_param_groups(model, 0.1)
    assert {p.dim() for p in groups[0]["params"]} == {2} and {p.dim() for p in groups[1]["params"]} == {1}


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)
