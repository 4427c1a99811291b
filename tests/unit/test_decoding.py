"""Decoding strategies against transformers' `generate` on the same imported GPT-2 weights, token for token."""

from __future__ import annotations

import string

import pytest
import torch

from data_pipelines.tokenizers import CharTokenizer
from gptframe.errors import ConfigError
from gptframe.inference.decoding import GenerationSettings, generate, stream_tokens
from gptframe.loading import load_model

PROMPTS = ["the king said", "go", "to my lord and"]  # different lengths: batches are left-padded


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random-init transformers GPT2LMHeadModel saved with save_pretrained, and gptframe's import of it."""
    import transformers

    tokenizer = CharTokenizer(list(string.ascii_lowercase + " .,!?"), with_eos=True)
    config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every weight random (LayerNorm scales around 1): varied, well-separated choices
        for name, p in hf.named_parameters():
            p.copy_(float(name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"))
                    + torch.randn(p.shape, generator=g) * 0.2)
    directory = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(directory)
    tokenizer.save(directory)
    loaded = load_model(directory)
    return hf.eval(), loaded.model.eval(), tokenizer


def _theirs(hf, prompts: list[list[int]], settings: GenerationSettings, **kw) -> list[list[list[int]]]:
    """transformers' generate on a left-padded batch: per prompt, its sequences of new tokens up to the first eos."""
    width = max(len(p) for p in prompts)
    pad = settings.pad_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens, do_sample=False,
                          num_beams=settings.num_beams, num_return_sequences=settings.num_return_sequences,
                          eos_token_id=settings.eos_token_id, pad_token_id=pad, **kw)
    rows = []
    for seq in out[:, width:].tolist():
        ends = [i for i, t in enumerate(seq) if t in settings.eos_ids]
        rows.append(seq[: ends[0] + 1] if ends else seq)
    n = settings.num_return_sequences
    return [rows[i * n : (i + 1) * n] for i in range(len(prompts))]


def _eos_the_model_reaches(model, tokenizer, prompt: list[int]) -> int:
    """A token greedy decoding first produces a few steps in, so that sequences do end on it, but not at once."""
    (seq,), = generate(model, [prompt], GenerationSettings(max_new_tokens=12))
    return next(t for i, t in enumerate(seq) if i >= 3 and t not in seq[:i])


CASES = {
    "greedy": dict(),
    "repetition_penalty": dict(repetition_penalty=1.6),
    "repetition_penalty_below_1": dict(repetition_penalty=0.7),
    "no_repeat_ngram": dict(no_repeat_ngram_size=2),
    "min_new_tokens": dict(min_new_tokens=6),
    "beam": dict(num_beams=3),
    "beam_return_all": dict(num_beams=4, num_return_sequences=4),
    "beam_early_stopping": dict(num_beams=3, early_stopping=True),
    "beam_never_long": dict(num_beams=3, early_stopping="never", length_penalty=2.0),
    "beam_short": dict(num_beams=3, length_penalty=-1.0),
    "beam_no_repeat_penalty": dict(num_beams=2, no_repeat_ngram_size=3, repetition_penalty=1.3),
}


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_deterministic_modes_give_transformers_tokens(models, case, batched):
    hf, ours, tokenizer = models
    prompts = [tokenizer.encode(p) for p in (PROMPTS if batched else PROMPTS[:1])]
    eos = _eos_the_model_reaches(ours, tokenizer, prompts[0])
    options = dict(CASES[case])
    hf_only = {k: options[k] for k in ("length_penalty", "early_stopping", "repetition_penalty",
                                        "no_repeat_ngram_size", "min_new_tokens") if k in options}
    settings = GenerationSettings(max_new_tokens=12, eos_token_id=[eos, tokenizer.eos_id], pad_token_id=eos, **options)
    expected = _theirs(hf, prompts, settings, **hf_only)
    got = generate(ours, prompts, settings)
    assert got == expected
    if settings.num_beams > 1 or case == "min_new_tokens":
        assert all(len(seq) > 0 for rows in got for seq in rows)


def test_the_cache_changes_nothing_in_batched_beam_search(models):
    _, ours, tokenizer = models
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    settings = dict(max_new_tokens=10, num_beams=3, num_return_sequences=2, eos_token_id=tokenizer.eos_id)
    with_cache = generate(ours, prompts, GenerationSettings(**settings))
    assert with_cache == generate(ours, prompts, GenerationSettings(use_cache=False, **settings))


def test_past_the_context_window_greedy_batches_equal_single_prompts(models):
    _, ours, tokenizer = models
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    settings = GenerationSettings(max_new_tokens=70)  # 64 positions: the window slides
    batched = generate(ours, prompts, settings)
    assert [rows[0] for rows in batched] == [generate(ours, [p], settings)[0][0] for p in prompts]
    assert all(len(rows[0]) == 70 for rows in batched)


def test_sampling_streams_what_generate_returns_and_respects_the_seed(models):
    _, ours, tokenizer = models
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    settings = GenerationSettings(max_new_tokens=15, do_sample=True, temperature=0.9, top_k=10, top_p=0.9,
                                  num_return_sequences=2, eos_token_id=tokenizer.eos_id)
    steps = list(stream_tokens(ours, prompts, settings, generator=torch.Generator().manual_seed(1)))
    streamed = torch.stack(steps, dim=1).tolist()
    sampled = generate(ours, prompts, settings, generator=torch.Generator().manual_seed(1))
    for row, seq in enumerate(r for rows in sampled for r in rows):
        assert streamed[row][: len(seq)] == seq
    assert sampled != generate(ours, prompts, settings, generator=torch.Generator().manual_seed(2))


def test_stop_strings_and_eos_lists_end_rows(models):
    _, ours, tokenizer = models
    prompt = tokenizer.encode(PROMPTS[0])
    (free,), = generate(ours, [prompt], GenerationSettings(max_new_tokens=20))
    stop = tokenizer.decode(free[4:6])  # a string the free run produces at tokens 5-6
    first = tokenizer.decode(free).index(stop)
    (stopped,), = generate(ours, [prompt], GenerationSettings(max_new_tokens=20, stop_strings=[stop]),
                           decode=tokenizer.decode)
    text = tokenizer.decode(stopped)
    assert text.endswith(stop) and text == tokenizer.decode(free)[: first + len(stop)]
    (ended,), = generate(ours, [prompt], GenerationSettings(max_new_tokens=20, eos_token_id=[free[7], free[2]]))
    assert ended == free[: min(free.index(free[7]), free.index(free[2])) + 1]  # whichever of the two comes first
    with pytest.raises(ConfigError, match="decode"):
        generate(ours, [prompt], GenerationSettings(max_new_tokens=5, stop_strings=["x"]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(num_beams=0), "num_beams must be >= 1"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(repetition_penalty=-1.0), "repetition_penalty must be > 0"),
        (dict(num_beams=2, num_return_sequences=3), "cannot exceed num_beams"),
        (dict(early_stopping="sometimes"), "early_stopping"),
    ],
)
def test_bad_settings_are_one_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        GenerationSettings(**options)
