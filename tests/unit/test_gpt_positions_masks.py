"""GPT's position_ids / attn_mask: the defaults change nothing, and they let a row hold left padding or several
documents without any token seeing another document (or padding)."""

import torch

from gptframe.models.gpt import GPT, GPTConfig


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32)).eval()


def test_explicit_default_positions_and_full_mask_equal_the_plain_call():
    model = _model()
    idx = torch.randint(0, 50, (2, 10))
    plain = model(idx)
    explicit = model(idx, position_ids=torch.arange(10).expand(2, 10), attn_mask=torch.ones(2, 1, 1, 10, dtype=torch.bool))
    torch.testing.assert_close(explicit, plain, atol=1e-5, rtol=1e-5)


def test_left_padded_rows_equal_the_unpadded_prompt_with_and_without_cache():
    model = _model()
    prompt = torch.randint(0, 50, (1, 6))
    alone = model(prompt)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)
    real = torch.tensor([[False] * 3 + [True] * 6])
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    got = model(padded, position_ids=positions, attn_mask=real[:, None, None, :])
    torch.testing.assert_close(got[:, 3:], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()  # padding rows see only themselves: no NaN leaks into later layers
    # continuing against a cache: the new token sees the real prompt only
    cache = model.new_kv_cache(1)
    model(padded, cache, position_ids=positions, attn_mask=real[:, None, None, :])
    nxt = torch.tensor([[7]])
    real2 = torch.cat([real, torch.ones(1, 1, dtype=torch.bool)], dim=1)
    step = model(nxt, cache, position_ids=torch.tensor([[6]]), attn_mask=real2[:, None, None, :])
    torch.testing.assert_close(step[:, -1], model(torch.cat([prompt, nxt], 1))[:, -1], atol=1e-5, rtol=1e-5)


def test_a_block_diagonal_mask_with_restarting_positions_equals_separate_documents():
    model = _model()
    a, b = torch.randint(0, 50, (1, 5)), torch.randint(0, 50, (1, 7))
    packed = torch.cat([a, b], dim=1)
    doc = torch.tensor([[0] * 5 + [1] * 7])
    mask = (doc[:, :, None] == doc[:, None, :])[:, None]  # [B, 1, T, T]; the model adds causality
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    got = model(packed, position_ids=positions, attn_mask=mask)
    torch.testing.assert_close(got[:, :5], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, 5:], model(b), atol=1e-5, rtol=1e-5)
