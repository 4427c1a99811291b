"""Llama: a decoder-only transformer with RMSNorm, rotary position embeddings, a SwiGLU MLP and grouped-query
attention, in plain PyTorch, readable top to bottom (after nanoGPT's model.py).

The same module also runs Mistral and Qwen2 checkpoints (Qwen2: `attention_bias=True`, a bias on the query, key and
value projections only). Module and parameter names are transformers' (`model.layers.0.self_attn.q_proj.weight`, ...),
so the Hugging Face mapping is near identity (see `hf.py`).

No Lightning, no distributed code: parallelism, precision and compilation are applied from outside.
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
class RopeScaling:
    """Llama-3.1's rotary frequency scaling (transformers' rope_type "llama3"): long wavelengths are divided by
    `factor`, short ones kept, the band between interpolated. Used by imported Llama-3.1/3.2 checkpoints."""

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type != "llama3":
            raise ValueError(f"model.rope_scaling.rope_type must be 'llama3' (the only scaling gptframe implements), "
                             f"got {self.rope_type!r}")
        if self.factor <= 0 or self.original_max_position_embeddings < 1:
            raise ValueError("model.rope_scaling.factor and original_max_position_embeddings must be positive, got "
                             f"{self.factor} and {self.original_max_position_embeddings}")
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(f"model.rope_scaling needs 0 < low_freq_factor < high_freq_factor, got "
                             f"{self.low_freq_factor} and {self.high_freq_factor}")


@dataclass
class LlamaConfig:
    arch: str = "llama"
    block_size: int = 2048  # context length
    vocab_size: int | None = None  # None: the tokenizer's vocab size (padded, see below)
    pad_vocab_size_multiple: int = 1  # 64 makes the LM head matmul faster on GPUs
    n_layer: int = 16
    n_head: int = 32
    n_kv_head: int = 8  # key/value heads (grouped-query attention); must divide n_head; 1 = multi-query
    n_embd: int = 2048
    head_dim: int | None = None  # None: n_embd // n_head
    intermediate_size: int = 8192  # SwiGLU hidden width
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2); o_proj never has one
    tie_word_embeddings: bool = False
    dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.arch != "llama":
            raise ValueError(f"model.arch must be 'llama' for LlamaConfig, got {self.arch!r}")
        if isinstance(self.rope_scaling, dict):  # e.g. read back from gptframe.json or a checkpoint's hparams
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        for name in ("block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size",
                     "pad_vocab_size_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_head={self.n_head} must be divisible by model.n_kv_head={self.n_kv_head}")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head} "
                             "(or set model.head_dim)")
        if self.head_dim is not None and self.head_dim < 1:
            raise ValueError(f"model.head_dim must be >= 1, got {self.head_dim}")
        if self.head_size % 2:
            raise ValueError(f"model.head_dim={self.head_size} must be even for rotary embeddings")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError(f"model.rms_norm_eps={self.rms_norm_eps} and model.rope_theta={self.rope_theta} must be "
                             "positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        """The per-head width actually used: head_dim, or n_embd // n_head when it is None."""
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head


# ---------------------------------------------------------------------------------------------------------------------
# rotary position embeddings


def rope_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """Rotary inverse frequencies [head_dim / 2], in fp32, exactly as transformers computes them (default and
    llama3 rope types)."""
    dim = config.head_size
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos and sin [B, T, head_dim] of the given positions. Angles are computed in fp32 whatever the model's dtype
    (bf16 positions would be wrong beyond 256), then cast to the activations' dtype, as transformers does."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        # not persistent: derived from the config, so checkpoints need not (and transformers' do not) carry it
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        """Moves with the model but stays exact fp32: `model.to(torch.bfloat16)` (bf16-true training) would round
        the frequencies, and with them every rotation angle position * inv_freq; `to_empty` (a model built on the
        meta device) would leave garbage."""
        super()._apply(fn, recurse)
        self.inv_freq = rope_inv_freq(self.config).to(self.inv_freq.device)
        return self

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            freqs = position_ids[:, :, None].float() * self.inv_freq.float()[None, None, :]  # B, T, head_dim / 2
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotation pairs dimension i with i + head_dim/2 (transformers' convention, not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, head_dim]; cos, sin [B, T, head_dim]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------------------------------------------------------------
# the transformer


class LlamaAttention(nn.Module):
    """Multi-head attention with n_kv_head key/value heads shared by groups of n_head / n_kv_head query heads."""

    def __init__(self, config: LlamaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_size
        self.dropout = config.dropout
        C, D = config.n_embd, config.head_size
        self.q_proj = nn.Linear(C, self.n_head * D, bias=config.attention_bias)
        self.k_proj = nn.Linear(C, self.n_kv_head * D, bias=config.attention_bias)
        self.v_proj = nn.Linear(C, self.n_kv_head * D, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.n_head * D, C, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # B, H, T, D
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # B, H_kv, T, D
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.append(self.layer, k, v)  # the cache holds rotated keys, n_kv_head of them
        dropout = self.dropout if self.training else 0.0
        if attn_mask is None and (past == 0 or T == 1):
            # no mask tensor: SDPA's flash kernel takes the grouped key/value heads as they are (enable_gqa)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=past == 0,
                                               enable_gqa=self.n_kv_head != self.n_head)
        else:
            if attn_mask is None:  # a chunk after a cached prefix: causal within the chunk, full over the prefix
                attn_mask = causal_mask(T, past, x.device)
            # with a mask, only the math kernel takes enable_gqa; repeating the key/value heads (as transformers'
            # repeat_kv) keeps the memory-efficient kernel
            repeat = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """Pre-RMSNorm transformer block (transformers' LlamaDecoderLayer). torch's RMSNorm computes what
    transformers' LlamaRMSNorm does (in fp32 within 1e-6; tests/unit/test_llama.py checks it)."""

    def __init__(self, config: LlamaConfig, layer: int):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer)
        self.post_attention_layernorm = nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, attn_mask))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


def _init_weights(module: nn.Module, std: float) -> None:
    """As transformers' Llama: normal(0, initializer_range) weights, zero biases (RMSNorm weights stay ones)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


class LlamaModel(nn.Module):
    """The decoder without a head: token embedding, blocks, final RMSNorm."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("LlamaConfig.vocab_size must be set (gptframe sets it from the tokenizer)")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([LlamaBlock(config, i) for i in range(config.n_layer)])
        self.norm = nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.apply(lambda m: _init_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        kv_cache: KVCache | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final RMSNorm's output [B, T, n_embd]. See `Llama.forward` for the arguments."""
        B, T = input_ids.shape
        start = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            if start + T > self.config.block_size:
                raise ValueError(f"sequence of {start + T} tokens exceeds block_size={self.config.block_size}")
            position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        if attn_mask is not None:
            attn_mask = combine_masks(attn_mask, T, start)
        x = self.dropout(self.embed_tokens(input_ids))
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        for block in self.layers:
            x = block(x, cos, sin, kv_cache, attn_mask)
        if kv_cache is not None:
            kv_cache.length += T
        return self.norm(x)


class Llama(nn.Module):
    """A Llama causal language model (transformers' LlamaForCausalLM)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        _init_weights(self.lm_head, config.initializer_range)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (tied weights once). non_embedding: without the input token embedding, a lookup (when it is
        tied to the LM head it is that matmul's weight and stays counted), i.e. the N of the FLOPs formula."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_word_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def forward(
        self,
        input_ids: torch.Tensor,
        kv_cache: KVCache | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids [B, T]; with a cache, input_ids continue the cached positions.

        position_ids [B, T]: rotary positions (default: the cache's length onwards; left-padded batches pass their
        own). attn_mask: bool, broadcastable to [B, 1, T, cached + T], True = may attend, combined with causality (default: causal, and full over
        a cached prefix).
        """
        return self.lm_head(self.hidden_states(input_ids, kv_cache, position_ids=position_ids, attn_mask=attn_mask))

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        kv_cache: KVCache | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final RMSNorm's output [B, T, n_embd]."""
        return self.model(input_ids, kv_cache, position_ids=position_ids, attn_mask=attn_mask)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        return new_kv_cache(self.model, batch_size, max_len)


def new_kv_cache(model: LlamaModel, batch_size: int, max_len: int | None = None) -> KVCache:
    c, p = model.config, model.embed_tokens.weight
    return KVCache(c.n_layer, batch_size, c.n_kv_head, max_len or c.block_size, c.head_size, p.device, p.dtype)


class LlamaForSequenceClassification(nn.Module):
    """Llama with a linear `score` head on the last real token's hidden state (as transformers'
    LlamaForSequenceClassification).

    Inputs are right-padded; `attention_mask` marks the real tokens. A causal model's last real token has seen the
    whole text and no padding, so no mask is needed inside the model.
    """

    def __init__(self, config: LlamaConfig, num_labels: int):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.n_embd, num_labels, bias=False)
        _init_weights(self.score, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,  # accepted so generic code can pass a batch's keys; unused
    ) -> torch.Tensor:
        hidden = self.model(input_ids)
        if attention_mask is None:
            last = torch.full((input_ids.size(0),), input_ids.size(1) - 1, device=input_ids.device)
        else:
            last = attention_mask.long().sum(dim=1).clamp(min=1) - 1
        pooled = hidden[torch.arange(input_ids.size(0), device=input_ids.device), last]
        return self.score(pooled)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters; non_embedding: without the token embedding (a lookup: no LM head multiplies by it)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if non_embedding else n


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs


def matmul_params(config: LlamaConfig, lm_head: bool = True) -> int:
    """N of the PaLM formula, counted as gptframe counts GPT-2's (nanoGPT's get_num_params(non_embedding=True)):
    every parameter a token passes through, RMSNorm weights and biases included, the token embedding only where it is
    the LM head's matrix (tied; untied it is a lookup). lm_head=False (classification): the backbone without the
    embedding; the per-sequence score head is left out."""
    if config.vocab_size is None:
        raise ValueError("the model config needs its vocab_size set (gptframe sets it from the tokenizer)")
    C, D = config.n_embd, config.head_size
    q, kv = config.n_head * D, config.n_kv_head * D
    attention = C * q + 2 * C * kv + q * C + (q + 2 * kv if config.attention_bias else 0)  # q, k, v, o (+ qkv biases)
    mlp = 3 * C * config.intermediate_size  # gate, up, down
    block = attention + mlp + 2 * C  # two RMSNorm weights
    n = config.n_layer * block + C  # final RMSNorm
    return n + config.vocab_size * C if lm_head else n


def flops_per_token(config: LlamaConfig, seq_len: int, lm_head: bool = True) -> float:
    """Training (forward + backward) FLOPs per token at sequence length `seq_len`: 6N + 12*L*H*Q*T (PaLM), with H the
    query heads and Q head_dim: each query head scores and mixes T keys/values of width Q however many key/value heads
    they share (grouped-query attention saves parameters and cache, not attention FLOPs)."""
    return 6 * matmul_params(config, lm_head) + 12 * config.n_layer * config.n_head * config.head_size * seq_len
