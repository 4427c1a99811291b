"""Tokenizers of Llama-family model directories: gptframe's ids equal `transformers.AutoTokenizer.from_pretrained`'s,
bos included (`encode_document`), for a byte-level BPE tokenizer.json (Llama-3 / Qwen2 / SmolLM style) and a Llama-2
SentencePiece tokenizer.model, and they survive gptframe's own save/load and its Hugging Face export. The fixtures are
built here with the `tokenizers` and `sentencepiece` libraries."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece as spm
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from data_pipelines.tokenizers import load_hf_tokenizer, tokenizer_from_files

CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog 12345.",
    "  Spaces   and\ttabs\nnew lines here",
    "Ünïcödé and emoji 🙂 mixed with ascii",
    "def f(x):\n    return x * 2  # code",
] * 30
# leading spaces, doubled spaces, newlines, unseen characters (byte fallback), literal special-token text, nothing
TEXTS = ["Hello world!", " leading space", "two  spaces\nand a newline", "emoji 🙂 ü ẞ", "", "<s> and </s> inside",
         "<|begin_of_text|>literal", "12345 digits"]
LLAMA3_BOS, LLAMA3_EOS = "<|begin_of_text|>", "<|end_of_text|>"


def byte_level_dir(d: Path, bos_template: bool, config: dict) -> Path:
    """A Llama-3-style directory: byte-level BPE tokenizer.json whose post-processor may prepend bos."""
    d.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[LLAMA3_BOS, LLAMA3_EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    if bos_template:
        bos = (LLAMA3_BOS, tok.token_to_id(LLAMA3_BOS))
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{LLAMA3_BOS} $A", pair=f"{LLAMA3_BOS} $A {LLAMA3_BOS} $B",
                                          special_tokens=[bos]),
        ])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": LLAMA3_BOS, "eos_token": LLAMA3_EOS, **config}))
    return d


def sentencepiece_model() -> bytes:
    """Trained with Llama-2's settings: BPE, dummy prefix, byte fallback, digits split, unk/bos/eos = 0/1/2."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=400, model_type="bpe",
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return model.getvalue()


LLAMA2_CONFIG = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                 "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def sentencepiece_dir(d: Path, legacy: bool) -> Path:
    d.mkdir(parents=True)
    (d / "tokenizer.model").write_bytes(sentencepiece_model())
    (d / "tokenizer_config.json").write_text(json.dumps({**LLAMA2_CONFIG, "legacy": legacy}))
    return d


def llama2_json_dir(d: Path) -> Path:
    """A transformers-4-era Llama-2 directory: tokenizer.model plus the tokenizer.json LlamaConverter wrote (a
    Prepend + Replace normaliser), which transformers 5's LlamaTokenizer does not use as it is."""
    source = transformers.AutoTokenizer.from_pretrained(sentencepiece_dir(d / "source", legacy=True))
    backend = Tokenizer.from_str(source.backend_tokenizer.to_str())
    backend.pre_tokenizer = None
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    d = d / "llama2"
    d.mkdir()
    backend.save(str(d / "tokenizer.json"))
    (d / "tokenizer.model").write_bytes((d.parent / "source" / "tokenizer.model").read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({**LLAMA2_CONFIG, "legacy": True}))
    return d


DIRECTORIES = {
    "llama3_bos_by_post_processor": lambda d: byte_level_dir(d, True, {"tokenizer_class": "PreTrainedTokenizerFast"}),
    # transformers 5 follows tokenizer.json's post-processor, not add_bos_token, for a PreTrainedTokenizerFast
    "byte_level_add_bos_token_only": lambda d: byte_level_dir(d, False, {"tokenizer_class": "PreTrainedTokenizerFast",
                                                                         "add_bos_token": True}),
    "qwen2_no_bos": lambda d: byte_level_dir(d, False, {"tokenizer_class": "Qwen2Tokenizer"}),
    "smollm_gpt2_class": lambda d: byte_level_dir(d, False, {"tokenizer_class": "GPT2Tokenizer"}),
    "llama2_sentencepiece": lambda d: sentencepiece_dir(d, legacy=False),
    "llama2_sentencepiece_legacy": lambda d: sentencepiece_dir(d, legacy=True),
    "llama2_tokenizer_json": llama2_json_dir,
}


@pytest.fixture(params=list(DIRECTORIES))
def directory(request, tmp_path) -> Path:
    return DIRECTORIES[request.param](tmp_path / "tok")


def test_ids_and_decoding_equal_auto_tokenizers(directory):
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    ours = load_hf_tokenizer(directory)
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        assert ours.encode_document(text) == ids, text
        assert ours.decode(ids) == theirs.decode(ids)
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    assert ours.add_bos == (theirs("a")["input_ids"][:1] == [theirs.bos_token_id])


def test_llama_directories_prepend_bos(tmp_path):
    assert load_hf_tokenizer(DIRECTORIES["llama3_bos_by_post_processor"](tmp_path / "a")).add_bos
    assert load_hf_tokenizer(DIRECTORIES["llama2_sentencepiece"](tmp_path / "b")).encode_document("x")[0] == 1
    assert not load_hf_tokenizer(DIRECTORIES["qwen2_no_bos"](tmp_path / "c")).add_bos


def test_gptframe_save_and_hf_export_keep_the_ids(directory, tmp_path):
    ours = load_hf_tokenizer(directory)
    again = tokenizer_from_files(ours.to_files())
    export = tmp_path / "export"
    export.mkdir()
    for name, data in ours.to_hf_files(model_max_length=64).items():
        (export / name).write_bytes(data)
    exported = transformers.AutoTokenizer.from_pretrained(export)
    for text in TEXTS:
        expected = ours.encode_document(text)
        assert again.encode_document(text) == expected, text
        assert exported(text)["input_ids"] == expected, text
