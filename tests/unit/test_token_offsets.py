"""Offset mapping (`Tokenizer.encode_with_offsets`) for every tokenizer kind: equal to transformers' fast tokenizers'
`return_offsets_mapping` where one exists for the same vocabulary, and spans that rebuild the text otherwise."""

from __future__ import annotations

import inspect

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, BertTokenizerFast, GPT2TokenizerFast

from data_pipelines.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordPieceTokenizer,
    load_hf_tokenizer,
)

SAMPLES = [
    "ROMEO:\nWhat,  say you?\n\n\t  héllo — ☃ 日本語 🙂 end\r\n",
    "",
    "   ",
    "  leading and trailing  ",
    "Café naïve résumé — Crème Brûlée à la Zürich, e\u0301 combined",  # accents, a combining mark
    "emoji 🙂🙂 snow ☃ and 中文 mixed",  # unseen characters: byte fallback / [UNK]
    "Punctuation... (lots) of it!!! #hash $5.00 50% a+b=c",
    "a" * 120 + " overlong word",  # longer than WordPiece's 100 characters: one [UNK]
    "digits 12345 and 3.14",
]


@pytest.fixture(scope="module")
def corpus(shakespeare_text) -> list[str]:
    return [line for line in shakespeare_text[:100_000].split("\n") if line.strip()]


@pytest.fixture(scope="module")
def samples(shakespeare_text) -> list[str]:
    return SAMPLES + [shakespeare_text[20_000:22_000]]


def assert_valid_spans(text: str, ids: list[int], offsets: list[tuple[int, int]]) -> None:
    assert len(offsets) == len(ids)
    assert all(0 <= start <= end <= len(text) for start, end in offsets)
    starts = [start for start, _ in offsets]
    assert starts == sorted(starts)  # never backwards


def assert_spans_rebuild_text(text: str, offsets: list[tuple[int, int]]) -> None:
    """Lossless kinds: the distinct spans, in order, tile the text."""
    distinct = list(dict.fromkeys(offsets))
    assert "".join(text[s:e] for s, e in distinct) == text
    assert all(e == s2 for (_, e), (s2, _) in zip(distinct[:-1], distinct[1:], strict=True))


def assert_same_as_fast(ours: Tokenizer, fast, texts: list[str], loose=lambda token_id: False) -> None:
    """loose(id): a token whose span may lie inside transformers' instead of equal to it."""
    for text in texts:
        ids, offsets = ours.encode_with_offsets(text)
        ref = fast(text, add_special_tokens=False, return_offsets_mapping=True)
        assert ids == ref["input_ids"] == ours.encode(text), text
        theirs = [tuple(o) for o in ref["offset_mapping"]]
        for i, (mine, their) in enumerate(zip(offsets, theirs, strict=True)):
            if loose(ids[i]):
                assert their[0] <= mine[0] <= mine[1] <= their[1], (text, i)
            else:
                assert mine == their, (text, i)
        assert_valid_spans(text, ids, offsets)


def test_char_offsets_are_one_code_point_each(shakespeare_text):
    tok = CharTokenizer.train([shakespeare_text, "héllo ☃"], with_eos=True)
    text = shakespeare_text[:3000] + "héllo ☃"
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert all(text[s:e] == tok.decode([i]) for i, (s, e) in zip(ids, offsets, strict=True))
    assert_spans_rebuild_text(text, offsets)


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_wordpiece_offsets_equal_bert_tokenizer_fast(lowercase, corpus, samples, tmp_path):
    tok = WordPieceTokenizer.train(lambda: corpus + SAMPLES, vocab_size=800, lowercase=lowercase)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tok.vocab_lines()) + "\n", encoding="utf-8")
    arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    fast = BertTokenizerFast(**{arg: str(vocab)}, do_lower_case=lowercase)
    assert_same_as_fast(tok, fast, samples)
    # a word's pieces span the word's characters (accents stripped from the ids, not from the spans)
    text = "Brûlée"
    ids, offsets = tok.encode_with_offsets(text)
    assert offsets[0][0] == 0 and offsets[-1][1] == len(text)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_offsets_equal_its_transformers_export(model_type, corpus, samples, tmp_path):
    """The fast tokenizer transformers builds from our tokenizer.json export (same ids) maps offsets as we do."""
    tok = SentencePieceTokenizer.train(lambda: corpus, vocab_size=500, model_type=model_type)
    for name, data in tok.to_hf_files().items():
        (tmp_path / name).write_bytes(data)
    fast = AutoTokenizer.from_pretrained(str(tmp_path))
    # transformers' Unigram falls back to bytes for a whole run of unknown characters at once, and gives each byte
    # the run's span; SentencePiece (and we) map each character's bytes to that character
    assert_same_as_fast(tok, fast, samples, loose=tok.sp.is_byte if model_type == "unigram" else lambda i: False)
    for text in samples:
        ids, offsets = tok.encode_with_offsets(text)
        assert_spans_rebuild_text(text, offsets)  # identity normalisation: lossless
    ids, offsets = tok.encode_with_offsets("a ☃")
    snowman = [o for i, o in zip(ids, offsets, strict=True) if tok.sp.is_byte(i)]
    assert snowman == [(2, 3)] * 3  # three UTF-8 bytes, one character


@pytest.fixture(scope="module")
def byte_level_bpe(corpus, tmp_path_factory):
    """A byte-level BPE built with the `tokenizers` library, saved as GPT2TokenizerFast.save_pretrained and as
    vocab.json + merges.txt."""
    bpe = Backend(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    fast_dir, files_dir = tmp_path_factory.mktemp("bpe_fast"), tmp_path_factory.mktemp("bpe_files")
    GPT2TokenizerFast(tokenizer_object=bpe).save_pretrained(str(fast_dir))
    bpe.model.save(str(files_dir))
    return fast_dir, files_dir


@pytest.mark.parametrize("which", ["tokenizer_json", "vocab_merges"])
def test_byte_level_bpe_offsets_equal_gpt2_tokenizer_fast(which, byte_level_bpe, samples):
    directory = byte_level_bpe[which == "vocab_merges"]
    ours = load_hf_tokenizer(directory)
    assert isinstance(ours, HFTokenizer)
    assert_same_as_fast(ours, GPT2TokenizerFast.from_pretrained(str(directory)), samples + ["one<|endoftext|>two"])
    ids, offsets = ours.encode_with_offsets("a ☃")
    assert len(ids) == 5 and offsets[-3:] == [(2, 3)] * 3  # the snowman's three byte tokens each span it
