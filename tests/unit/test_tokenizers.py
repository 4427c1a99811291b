import pytest

from data_pipelines.errors import TokenizerError
from data_pipelines.tokenizers import CharTokenizer, SentencePieceTokenizer, load_tokenizer, tokenizer_from_files

TRICKY = "ROMEO:\nWhat,  say you?\n\n\t  héllo — ☃ 日本語 🙂 end\r\n"


@pytest.fixture(scope="module")
def spm(shakespeare_text) -> SentencePieceTokenizer:
    lines = [line for line in shakespeare_text[:300_000].split("\n") if line.strip()]
    return SentencePieceTokenizer.train(lambda: lines, vocab_size=600, model_type="bpe")


def test_char_round_trip_and_vocab(shakespeare_text):
    tok = CharTokenizer.train([shakespeare_text], with_eos=False)
    assert tok.vocab_size == 65  # nanoGPT's shakespeare_char vocabulary
    assert tok.chars[:3] == ["\n", " ", "!"]
    ids = tok.encode(shakespeare_text[:5000])
    assert tok.decode(ids) == shakespeare_text[:5000]
    assert tok.encode_batch(["ab", "c"]) == [tok.encode("ab"), tok.encode("c")]
    assert tok.eos_id is None and tok.special_ids == {}


def test_char_unknown_character_is_a_clear_error(shakespeare_text):
    tok = CharTokenizer.train([shakespeare_text], with_eos=False)
    with pytest.raises(TokenizerError, match="not in the char vocabulary"):
        tok.encode("snow ☃")


def test_char_with_eos_for_multi_document_corpora():
    tok = CharTokenizer.train(["ab", "ba"], with_eos=True)
    assert tok.vocab_size == 3 and tok.eos_id == 2
    assert tok.decode([0, 2, 1]) == "a<|endoftext|>b"


def test_sentencepiece_round_trips_any_text(spm):
    for text in (TRICKY, "", "   ", "\n\n\n", "x" * 500):
        assert spm.decode(spm.encode(text)) == text
    assert spm.special_ids == {"unk": 0, "bos": 1, "eos": 2, "pad": 3}
    assert spm.encode("\n") == [spm.sp.piece_to_id("\n")]  # newline is its own piece
    assert spm.encode_batch(["ROMEO:", "JULIET:"]) == [spm.encode("ROMEO:"), spm.encode("JULIET:")]
    assert len(spm.encode("ROMEO: what say you")) < len("ROMEO: what say you")  # it merges


def test_sentencepiece_vocab_too_large_is_a_clear_error():
    with pytest.raises(TokenizerError, match="SentencePiece training failed"):
        SentencePieceTokenizer.train(lambda: ["tiny corpus"] * 3, vocab_size=5000, byte_fallback=False)


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_save_load_and_embedded_files_round_trip(kind, spm, shakespeare_text, tmp_path):
    tok = spm if kind == "sentencepiece" else CharTokenizer.train([shakespeare_text], with_eos=False)
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    from_files = tokenizer_from_files(tok.to_files())
    sample = shakespeare_text[1000:3000]
    for other in (loaded, from_files):
        assert type(other) is type(tok)
        assert other.encode(sample) == tok.encode(sample)
        assert other.fingerprint == tok.fingerprint
        assert other.special_ids == tok.special_ids


def test_load_sentencepiece_model_file(spm, tmp_path):
    path = tmp_path / "m.model"
    path.write_bytes(spm.model_proto)
    assert load_tokenizer(path).encode(TRICKY) == spm.encode(TRICKY)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a valid SentencePiece model"):
        load_tokenizer(bad)


def test_fingerprint_differs_between_tokenizers(spm, shakespeare_text):
    char = CharTokenizer.train([shakespeare_text], with_eos=False)
    assert char.fingerprint != spm.fingerprint


def test_sentencepiece_training_is_reproducible_when_lines_are_sampled(shakespeare_text):
    lines = [line for line in shakespeare_text.split("\n") if line.strip()]
    assert len(lines) > 4000
    fingerprints = {
        SentencePieceTokenizer.train(lambda: lines, vocab_size=400, max_training_lines=4000).fingerprint for _ in range(3)
    }
    assert len(fingerprints) == 1
    other = SentencePieceTokenizer.train(lambda: lines[::-1], vocab_size=400, max_training_lines=4000)
    assert other.fingerprint not in fingerprints  # a different sample, a different tokenizer: it did subsample


def test_line_sample_is_seeded_streamed_and_spread():
    from data_pipelines.tokenizers.base import sample_lines

    lines = [str(i) for i in range(10_000)]
    a, b = list(sample_lines(lambda: iter(lines), 1000)), list(sample_lines(lambda: iter(lines), 1000))
    assert a == b and 900 < len(a) < 1100 and len(set(a)) == len(a)
    assert int(a[0]) < 100 and int(a[-1]) > 9900  # drawn from the whole stream, in order
    assert list(sample_lines(lambda: iter(lines[:50]), 100)) == lines[:50]
