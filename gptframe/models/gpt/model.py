"""GPT-2: a decoder-only transformer in plain PyTorch, readable top to bottom (after nanoGPT's model.py).

No Lightning, no distributed code: parallelism, precision and compilation are applied from outside
(`gptframe.training.parallelize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptframe.models.kv_cache import KVCache
from gptframe.models.masks import causal_mask, combine_masks


@dataclass
class GPTConfig:
    arch: str = "gpt"
    block_size: int = 1024  # context length
    vocab_size: int | None = None  # None: the tokenizer's vocab size (padded, see below)
    pad_vocab_size_multiple: int = 1  # 64 makes the LM head matmul faster on GPUs (GPT-2: 50257 -> 50304)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2
    activation: str = "gelu_tanh"  # gelu_tanh: GPT-2 (HF "gelu_new") | gelu: exact erf GELU (nanoGPT)

    def __post_init__(self) -> None:
        if self.arch != "gpt":
            raise ValueError(f"model.arch must be 'gpt' for GPTConfig, got {self.arch!r}")
        for name in ("block_size", "n_layer", "n_head", "n_embd", "pad_vocab_size_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"model.activation must be 'gelu' or 'gelu_tanh', got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, kv_cache: KVCache | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # B, H, T, D
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.append(self.layer, k, v)
        dropout = self.dropout if self.training else 0.0
        y = attention(q, k, v, past, attn_mask, dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def attention(q, k, v, past: int, attn_mask: torch.Tensor | None, dropout: float) -> torch.Tensor:
    """SDPA over [B, H, T, D] queries and [B, H, past + T, D] keys: causal, or the given bool mask (already
    combined with causality by the model: combine_masks)."""
    if attn_mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
    T = q.size(2)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    if T == 1:  # one new token attends to every cached position
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    # a chunk after a cached prefix: causal within the chunk, full over the prefix
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, past, q.device), dropout_p=dropout)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, kv_cache: KVCache | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, attn_mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("GPTConfig.vocab_size must be set (gptframe sets it from the tokenizer)")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), one per residual add
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (tied weights once). non_embedding: without position embeddings, as GPT-2 papers count."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids [B, T]; with a cache, idx continues the cached positions.

        position_ids [B, T]: the learned positions to take (default: the cache length onwards), e.g. restarting at each
        document of a packed row, or counting from the first real token of a left-padded prompt. attn_mask: bool,
        broadcastable to [B, 1, T, cached + T], True = may attend; it is combined with the causal mask.
        """
        return self.lm_head(self.hidden_states(idx, kv_cache, position_ids=position_ids, attn_mask=attn_mask))

    def hidden_states(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final LayerNorm's output [B, T, n_embd]."""
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size={self.config.block_size}")
        if position_ids is None:
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        else:
            pos = position_ids
        if attn_mask is not None:
            attn_mask = combine_masks(attn_mask, T, start)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, kv_cache, attn_mask)
        if kv_cache is not None:
            kv_cache.length += T
        return self.transformer.ln_f(x)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        c, p = self.config, self.transformer.wte.weight
        return KVCache(c.n_layer, batch_size, c.n_head, max_len or c.block_size, c.n_embd // c.n_head, p.device, p.dtype)


class GPTForSequenceClassification(nn.Module):
    """GPT with a linear `score` head on the last real token's hidden state (as GPT2ForSequenceClassification).

    Inputs are right-padded; `attention_mask` marks the real tokens. A causal model's last real token has seen the
    whole text and no padding, so no mask is needed inside the model.
    """

    def __init__(self, config: GPTConfig, num_labels: int):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.gpt = GPT(config)
        self.score = nn.Linear(config.n_embd, num_labels, bias=False)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,  # accepted so callers pass any batch; a GPT has no segments
    ) -> torch.Tensor:
        hidden = self.gpt.hidden_states(input_ids)
        if attention_mask is None:
            last = torch.full((input_ids.size(0),), input_ids.size(1) - 1, device=input_ids.device)
        else:
            last = attention_mask.long().sum(dim=1).clamp(min=1) - 1
        pooled = hidden[torch.arange(input_ids.size(0), device=input_ids.device), last]
        return self.score(pooled)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
