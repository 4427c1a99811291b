"""Autoregressive generation for decoders: greedy or sampled (temperature, top-k, top-p), with a KV cache, streaming."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from gptframe.registry import architecture_of


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A prompt as the model reads a document's start (bos first for Llama's tokenizers); an empty prompt starts
    from a document boundary (end-of-text) where the tokenizer has one."""
    return tokenizer.encode_document(prompt) or [tokenizer.eos_id if tokenizer.eos_id is not None else 0]


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    """Scale by temperature, keep the top_k largest and the smallest set with probability >= top_p."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        sorted_probs = sorted_logits.softmax(-1)
        drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep tokens until top_p is covered
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_samples: int = 1,
    vocab_size: int | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of each sample ([num_samples]) until max_new_tokens or every sample produced eos.

    vocab_size: the tokenizer's size; padded model vocab entries beyond it are never produced.
    Beyond the context window the prompt is cropped to the last block_size tokens each step (as nanoGPT); with learned
    absolute (or rotary) positions baked into the cached keys, it cannot be shifted, so those steps recompute the window.
    """
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    block = architecture_of(model.config).context_length(model.config)
    device = next(model.parameters()).device
    tokens = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)
    finished = torch.zeros(num_samples, dtype=torch.bool, device=device)
    cache = None
    for _ in range(max_new_tokens):
        if use_cache and cache is not None and cache.length < block:
            logits = model(tokens[:, -1:], cache)
        else:
            window = tokens[:, -block:]
            cache = model.new_kv_cache(num_samples) if use_cache else None
            logits = model(window, cache)
        logits = logits[:, -1, :vocab_size].float()
        if do_sample:
            probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
            next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_token = logits.argmax(-1)
        if eos_id is not None:
            next_token = torch.where(finished, torch.full_like(next_token, eos_id), next_token)
            finished |= next_token == eos_id
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        yield next_token
        if eos_id is not None and bool(finished.all()):
            return


class TextStreamer:
    """Turns a growing list of ids into printable text deltas; holds back incomplete UTF-8 (byte-fallback) tails."""

    def __init__(self, decode):
        self.decode = decode
        self.ids: list[int] = []
        self.printed = 0

    def put(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self.printed :]
        self.printed = len(text)
        return delta

    def end(self) -> str:
        text = self.decode(self.ids)
        delta = text[self.printed :]
        self.printed = len(text)
        return delta
