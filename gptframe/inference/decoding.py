"""Decoding strategies over a KV cache: greedy, sampling (temperature / top-k / top-p), beam search, with repetition
penalty, no-repeat n-grams, a minimum length, several end tokens, stop strings, and batches of prompts of different
lengths (left-padded, with positions counted from each prompt's first real token).

Semantics follow `transformers`' `generate` (the logits processors in its order: repetition penalty, no-repeat
n-grams, minimum new tokens; then temperature, top-k, top-p when sampling; beam search as its `_beam_search`), so the
deterministic modes give the same tokens as transformers on the same weights (tests/unit/test_decoding.py). One
deliberate difference: penalties and n-gram bans look at a row's real tokens only, never at left padding.

The model protocol (gptframe's GPT; every decoder implements it):
    model(input_ids [B, T], kv_cache=None, *, position_ids=None [B, T], attn_mask=None) -> logits [B, T, V]
    model.new_kv_cache(batch_size, max_len) -> a cache with `.length` and `.keys` / `.values`
        [n_layer, B, n_kv_heads, max_len, head_dim] (beam search reorders dim 1)
    the context length: the architecture's (gptframe.registry)
attn_mask is bool, broadcastable to [B, 1, T, cached + T], True = may attend; the model adds causality.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from gptframe.errors import ConfigError
from gptframe.registry import architecture_of

NEG_INF = float("-inf")
BEAM_DISCARD = -1.0e9  # transformers' score for beams that must not be chosen (finite, so sums stay ordered)


@dataclass
class GenerationSettings:
    """What to generate and how; invalid values fail here with one clear message."""

    max_new_tokens: int = 50
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search: a finished beam scores sum(logprobs) / new_tokens ** length_penalty
    early_stopping: bool | str = False  # beam search: True | False | "never", as transformers
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the row (CTRL; logits / p, or * p if < 0)
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this size occurs twice in a row
    min_new_tokens: int = 0  # the end tokens are forbidden before this many new tokens
    eos_token_id: int | list[int] | None = None  # any of them ends a row
    pad_token_id: int | None = None  # what finished rows receive (default: the first eos id, else 0)
    stop_strings: list[str] = field(default_factory=list)  # a row ends once its new text contains one (needs decode)
    num_return_sequences: int = 1  # per prompt: samples, or the best beams
    vocab_size: int | None = None  # the tokenizer's size: padded model vocab entries beyond it are never produced
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1.0: no penalty), got {self.repetition_penalty}")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1 or null, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.no_repeat_ngram_size < 0 or self.min_new_tokens < 0:
            raise ConfigError("no_repeat_ngram_size and min_new_tokens must be >= 0")
        if self.early_stopping not in (True, False, "never"):
            raise ConfigError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if self.num_return_sequences < 1:
            raise ConfigError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.num_beams > 1 and self.do_sample:
            raise ConfigError("beam search is deterministic here: use num_beams=1 with do_sample=true, or do_sample=false")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ConfigError(
                f"num_return_sequences={self.num_return_sequences} cannot exceed num_beams={self.num_beams}"
            )
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        if any(not s for s in self.stop_strings):
            raise ConfigError("stop_strings must be non-empty strings")

    @property
    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    @property
    def pad_id(self) -> int:
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_ids[0] if self.eos_ids else 0


# ---------------------------------------------------------------------------------------------------------------------
# logits processing


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    """Scale by temperature, keep the top_k largest and the smallest set with probability >= top_p."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        sorted_probs = sorted_logits.softmax(-1)
        drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep tokens until top_p is covered
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, NEG_INF)
    return logits


def apply_repetition_penalty(scores: torch.Tensor, tokens: torch.Tensor, real: torch.Tensor, penalty: float):
    """CTRL's penalty on every token a row holds (transformers' RepetitionPenaltyLogitsProcessor): a positive score is
    divided by `penalty`, a negative one multiplied. Padding positions point at the row's last token (penalised anyway),
    so padding never penalises the pad id."""
    tokens = torch.where(real, tokens, tokens[:, -1:])
    picked = scores.gather(1, tokens)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, tokens, picked)


def ban_repeated_ngrams(scores: torch.Tensor, tokens: torch.Tensor, real: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid every token that would complete an n-gram the row already holds (transformers' NoRepeatNGram)."""
    for row in range(scores.size(0)):
        seq = tokens[row][real[row]].tolist()
        if len(seq) + 1 < n:
            continue
        prefix = tuple(seq[len(seq) - n + 1 :]) if n > 1 else ()
        banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == prefix}
        if banned:
            scores[row, list(banned)] = NEG_INF
    return scores


def process_logits(
    scores: torch.Tensor, tokens: torch.Tensor, real: torch.Tensor, new_tokens: int, settings: GenerationSettings
) -> torch.Tensor:
    """transformers' logits processors, in its order: repetition penalty, no-repeat n-grams, minimum new tokens.

    scores [N, V] (logits, or log-probabilities in beam search); tokens / real [N, L]: each row so far, and which of
    its positions are real tokens (not left padding).
    """
    if settings.repetition_penalty != 1.0:
        scores = apply_repetition_penalty(scores, tokens, real, settings.repetition_penalty)
    if settings.no_repeat_ngram_size > 0:
        scores = ban_repeated_ngrams(scores, tokens, real, settings.no_repeat_ngram_size)
    if new_tokens < settings.min_new_tokens and settings.eos_ids:
        scores[:, settings.eos_ids] = NEG_INF
    return scores


# ---------------------------------------------------------------------------------------------------------------------
# batches of prompts and the model calls


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, real) [N, max_len]: prompts right-aligned, as decoders need to append to all rows at once."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must hold at least one token")
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        real[row, width - len(prompt) :] = True
    return tokens.to(device), real.to(device)


def positions_of(real: torch.Tensor) -> torch.Tensor:
    """Position ids [N, L]: counted from each row's first real token (padding gets 0), as transformers does."""
    return (real.long().cumsum(-1) - 1).clamp(min=0)


class Stepper:
    """Runs the model on a growing batch: the prompt once, then the new tokens against the cache.

    Beyond the context window (learned positions cannot shift), every step recomputes the last block_size positions
    without the cache's history, as nanoGPT crops its context.
    """

    def __init__(self, model, use_cache: bool):
        self.model = model
        self.use_cache = use_cache
        self.block = architecture_of(model.config).context_length(model.config)
        self.cache = None

    def logits(self, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Next-token logits [N, V] of rows `tokens` [N, L] whose last token was just appended (or the prompt)."""
        padded = not bool(real.all())
        if self.use_cache and self.cache is not None and self.cache.length < self.block:
            mask = real[:, None, None, :] if padded else None
            positions = positions_of(real)[:, -1:] if padded else None
            return self.model(tokens[:, -1:], self.cache, position_ids=positions, attn_mask=mask)[:, -1]
        tokens, real = tokens[:, -self.block :], real[:, -self.block :]
        padded = not bool(real.all())
        self.cache = self.model.new_kv_cache(tokens.size(0), self.block) if self.use_cache else None
        mask = real[:, None, None, :] if padded else None
        positions = positions_of(real) if padded else None
        return self.model(tokens, self.cache, position_ids=positions, attn_mask=mask)[:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i of the next step continues row rows[i] of this one."""
        if self.cache is not None:  # only the filled positions: the preallocated rest is many times larger
            n = self.cache.length
            self.cache.keys[:, :, :, :n] = self.cache.keys[:, :, :, :n].index_select(1, rows)
            self.cache.values[:, :, :, :n] = self.cache.values[:, :, :, :n].index_select(1, rows)


class StopStrings:
    """Whether a row's new text contains one of the stop strings (transformers keeps the string in the output)."""

    def __init__(self, stop_strings: Sequence[str], decode: Callable[[list[int]], str] | None):
        if stop_strings and decode is None:
            raise ConfigError("stop_strings need the tokenizer's decode function")
        self.stop_strings = list(stop_strings)
        self.decode = decode

    def __bool__(self) -> bool:
        return bool(self.stop_strings)

    def hit(self, new_tokens: list[int]) -> bool:
        text = self.decode(new_tokens)
        return any(s in text for s in self.stop_strings)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _ends(tokens: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    if not eos_ids:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device))


# ---------------------------------------------------------------------------------------------------------------------
# greedy and sampling


@torch.no_grad()
def stream_tokens(
    model,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    generator: torch.Generator | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> Iterator[torch.Tensor]:
    """Greedy or sampled decoding, one step at a time: yields the next token of every row, [N] with N =
    len(prompts) * num_return_sequences (prompt i's samples are rows i*n .. i*n+n-1). A row that ended (an eos id, or a
    stop string, which needs `decode`) receives pad_token_id afterwards; the stream stops when every row ended or
    after max_new_tokens steps."""
    if settings.num_beams > 1:
        raise ConfigError("beam search does not stream: use generate()")
    stops = StopStrings(settings.stop_strings, decode)
    eos_ids, pad = settings.eos_ids, settings.pad_id
    repeated = [p for p in prompts for _ in range(settings.num_return_sequences)]
    tokens, real = left_pad(repeated, pad, _device(model))
    finished = torch.zeros(tokens.size(0), dtype=torch.bool, device=tokens.device)
    stepper = Stepper(model, settings.use_cache)
    new: list[list[int]] = [[] for _ in repeated]
    for step in range(settings.max_new_tokens):
        scores = stepper.logits(tokens, real)[:, : settings.vocab_size].float()
        scores = process_logits(scores, tokens, real, step, settings)
        if settings.do_sample:
            probs = filter_logits(scores, settings.temperature, settings.top_k, settings.top_p).softmax(-1)
            next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_token = scores.argmax(-1)
        next_token = torch.where(finished, torch.full_like(next_token, pad), next_token)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        real = torch.cat([real, ~finished[:, None]], dim=1)  # pads after the end take no part in penalties
        ended = _ends(next_token, eos_ids)
        if stops:
            for row in (~finished).nonzero().flatten().tolist():
                new[row].append(int(next_token[row]))
                ended[row] |= stops.hit(new[row])
        finished |= ended
        yield next_token
        if bool(finished.all()):
            return


# ---------------------------------------------------------------------------------------------------------------------
# beam search


@torch.no_grad()
def beam_search(
    model,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    decode: Callable[[list[int]], str] | None = None,
) -> list[list[list[int]]]:
    """Beam search as transformers' `_beam_search`: each step keeps the best max(2, 1 + #eos) * num_beams
    continuations; those that end (an eos id, a stop string, or max_new_tokens) and rank among the top num_beams
    become finished hypotheses scored sum(logprobs) / new_tokens ** length_penalty, the rest that run on are the next
    num_beams beams. It stops when no running beam can beat the worst finished one (early_stopping=False: judged at
    the current length; "never": at the longest possible length when length_penalty > 0), as soon as every prompt has
    num_beams finished hypotheses (early_stopping=True), or at max_new_tokens.

    Returns, per prompt, its num_return_sequences best hypotheses (best first): the new tokens, eos included.
    """
    B, K, M = len(prompts), settings.num_beams, settings.max_new_tokens
    if M == 0:
        return [[[] for _ in range(settings.num_return_sequences)] for _ in prompts]
    stops = StopStrings(settings.stop_strings, decode)
    eos_ids, pad, lp = settings.eos_ids, settings.pad_id, settings.length_penalty
    device = _device(model)
    keep = max(2, 1 + len(eos_ids)) * K
    top_beam = torch.arange(keep, device=device) < K  # only these may finish: the rest are spares to run on
    tokens, real = left_pad([p for p in prompts for _ in range(K)], pad, device)  # [B*K, L], beam-major per prompt
    run_new = torch.full((B, K, M), pad, dtype=torch.long, device=device)  # running beams' new tokens
    run_scores = torch.zeros(B, K, device=device)
    run_scores[:, 1:] = BEAM_DISCARD  # the first step expands beam 0 only (all beams are equal)
    fin_new = run_new.clone()
    fin_scores = torch.full((B, K), BEAM_DISCARD, device=device)
    fin_len = torch.zeros(B, K, dtype=torch.long, device=device)
    fin_done = torch.zeros(B, K, dtype=torch.bool, device=device)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=device)
    stepper = Stepper(model, settings.use_cache)
    batch_offset = torch.arange(B, device=device)[:, None] * K
    for step in range(M):
        logits = stepper.logits(tokens, real)[:, : settings.vocab_size].float()
        log_probs = process_logits(logits.log_softmax(-1), tokens, real, step, settings)
        V = log_probs.size(-1)
        total = (log_probs.view(B, K, V) + run_scores[:, :, None]).view(B, K * V)
        cand_scores, cand = torch.topk(total, keep)  # [B, keep]
        cand_beam, cand_token = cand // V, cand % V
        cand_new = run_new.gather(1, cand_beam[:, :, None].expand(B, keep, M)).clone()
        cand_new[:, :, step] = cand_token
        ends = _ends(cand_token, eos_ids) | (step + 1 >= M)
        if stops:
            for b, k in (~ends).nonzero().tolist():
                ends[b, k] = stops.hit(cand_new[b, k, : step + 1].tolist())
        # the beams that run on: the best `K` candidates that did not end
        running = cand_scores + ends.float() * BEAM_DISCARD
        run_scores, pick = torch.topk(running, K)
        run_new = cand_new.gather(1, pick[:, :, None].expand(B, K, M))
        source = (cand_beam.gather(1, pick) + batch_offset).flatten()  # row of this step each new beam continues
        # the finished hypotheses: the best `K` of those so far and those that just ended among the top `K` candidates
        finished_now = ends & top_beam[None, :]
        scored = cand_scores / ((step + 1) ** lp)
        full = fin_done.all(dim=1, keepdim=True) & (settings.early_stopping is True)
        scored = scored + full.float() * BEAM_DISCARD + (~can_improve).float() * BEAM_DISCARD
        scored = scored + (~finished_now).float() * BEAM_DISCARD
        merged_scores = torch.cat([fin_scores, scored], dim=1)
        fin_scores, best = torch.topk(merged_scores, K)
        fin_new = torch.cat([fin_new, cand_new], dim=1).gather(1, best[:, :, None].expand(B, K, M))
        fin_len = torch.cat([fin_len, torch.full_like(cand_token, step + 1)], dim=1).gather(1, best)
        fin_done = torch.cat([fin_done, finished_now], dim=1).gather(1, best)
        # the next step's rows: the chosen beams' histories plus their new token
        stepper.reorder(source)
        tokens = torch.cat([tokens.index_select(0, source), run_new[:, :, step].reshape(-1, 1)], dim=1)
        real = torch.cat([real.index_select(0, source), torch.ones_like(real[:, :1])], dim=1)
        can_improve = _may_improve(can_improve, run_scores, fin_scores, fin_done, step + 1, M, settings)
        everyone_full = bool(fin_done.all()) and settings.early_stopping is True
        if not bool(can_improve.any()) or everyone_full or bool(ends.all()):
            break
    n = settings.num_return_sequences
    return [[fin_new[b, k, : fin_len[b, k]].tolist() for k in range(n)] for b in range(B)]


def _may_improve(can_improve, run_scores, fin_scores, fin_done, new_tokens: int, max_new: int, settings) -> torch.Tensor:
    """transformers' early-stop heuristic: can the best running beam still beat the worst finished hypothesis?"""
    lp = settings.length_penalty
    length = max_new if settings.early_stopping == "never" and lp > 0.0 else new_tokens
    best_running = run_scores[:, :1] / (length**lp)
    worst_finished = torch.where(fin_done, fin_scores.min(dim=1, keepdim=True).values, BEAM_DISCARD)
    return can_improve & (best_running > worst_finished).any(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------------------------------
# one entry point


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    generator: torch.Generator | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> list[list[list[int]]]:
    """Per prompt, num_return_sequences lists of new tokens (ending with the eos id or the token that completed a stop
    string when the row ended that way; nothing after it). Beam search when num_beams > 1, else greedy or sampling."""
    if settings.num_beams > 1:
        return beam_search(model, prompts, settings, decode=decode)
    n = settings.num_return_sequences
    rows: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    done = [False] * len(rows)
    stops = StopStrings(settings.stop_strings, decode)
    eos = set(settings.eos_ids)
    for step_tokens in stream_tokens(model, prompts, settings, generator=generator, decode=decode):
        for row, token in enumerate(step_tokens.tolist()):
            if done[row]:
                continue
            rows[row].append(token)
            done[row] = token in eos or (bool(stops) and stops.hit(rows[row]))
    return [rows[i * n : (i + 1) * n] for i in range(len(prompts))]


def generate_tokens(
    model,
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
    **options,
) -> Iterator[torch.Tensor]:
    """One prompt, `num_samples` rows: yields each step's tokens [num_samples] (finished rows repeat eos_id).

    The streaming interface gptframe-generate and the text-generation pipeline use; `options` are any other
    GenerationSettings fields (repetition_penalty, no_repeat_ngram_size, min_new_tokens, stop_strings with `decode`).
    """
    decode = options.pop("decode", None)
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
        num_return_sequences=num_samples, vocab_size=vocab_size, eos_token_id=eos_id, pad_token_id=eos_id,
        use_cache=use_cache, **options,
    )
    return stream_tokens(model, [prompt_ids], settings, generator=generator, decode=decode)
