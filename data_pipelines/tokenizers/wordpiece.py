"""WordPiece (BERT), built with the Hugging Face `tokenizers` library in BERT's exact pipeline: BertNormalizer
(lowercase optional; accents stripped when lowercasing), BertPreTokenizer, WordPiece with "##" continuations and at
most 100 characters a word, and [CLS] A [SEP] (B [SEP]) templates. On the same vocab.txt its ids equal
transformers.BertTokenizerFast's.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from data_pipelines.errors import TokenizerError
from data_pipelines.tokenizers.base import HFExport, Tokenizer, sample_lines

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"


def _assemble(model: models.Model, lowercase: bool) -> HFTokenizer:
    tok = HFTokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _finish(tok: HFTokenizer) -> HFTokenizer:
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise TokenizerError(f"WordPiece vocabulary lacks the special tokens {missing} (needs {SPECIAL_TOKENS})")
    tok.add_special_tokens(SPECIAL_TOKENS)  # never split or lowercased
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def _word_inner_characters(lines: Callable[[], Iterable[str]], normalizer) -> list[str]:
    """Sorted characters that can follow another inside a word after BERT normalisation (not punctuation,
    whitespace or CJK, which BERT's pre-tokenizer always splits off)."""
    raw: set[str] = set()
    for line in lines():
        raw.update(line)
    chars = {c for r in raw for c in normalizer.normalize_str(r)}
    return sorted(c for c in chars if not (c.isspace() or unicodedata.category(c).startswith("P") or _is_cjk(c)))


def _is_cjk(c: str) -> bool:
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                             (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class WordPieceTokenizer(Tokenizer):
    kind = "wordpiece"

    @classmethod
    def from_path(cls, path: Path, lowercase: bool) -> WordPieceTokenizer | None:
        return cls.from_vocab(path, lowercase) if path.is_file() and path.suffix == ".txt" else None

    def __init__(self, hf: HFTokenizer, lowercase: bool):
        self.hf = hf
        self.lowercase = lowercase
        self._ids = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}

    @classmethod
    def train(
        cls,
        lines: Callable[[], Iterable[str]],
        vocab_size: int,
        lowercase: bool = True,
        max_training_lines: int = 2_000_000,
    ) -> WordPieceTokenizer:
        """Train on the lines `lines()` yields (a seeded sample of at most max_training_lines of them).

        The trainer (tokenizers <= 0.23) numbers "##x" continuation tokens in hash-map order, and those numbers break
        ties between merges, so the same text gives a different vocabulary on each run (huggingface/tokenizers#1794).
        Declaring every "##x" up front, in sorted order, fixes their numbers; the vocabulary is then rebuilt so that
        only BERT's five tokens are special.
        """
        tok = _assemble(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100), lowercase)
        continuations = ["##" + c for c in _word_inner_characters(lines, tok.normalizer)]
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,  # "##x" tokens count against it, as the trainer's own ones do
            special_tokens=SPECIAL_TOKENS + continuations,
            continuing_subword_prefix="##",
            show_progress=False,
        )
        tok.train_from_iterator(sample_lines(lines, max_training_lines), trainer=trainer)
        vocab = tok.get_vocab()
        if len(vocab) <= len(SPECIAL_TOKENS) + len(continuations):
            raise TokenizerError("WordPiece training saw no text")
        model = models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100)
        return cls(_finish(_assemble(model, lowercase)), lowercase)

    @classmethod
    def from_vocab(cls, vocab_path: str | Path, lowercase: bool = True) -> WordPieceTokenizer:
        """A BERT vocab.txt (one token a line), as BertTokenizerFast(vocab_file, do_lower_case=lowercase) reads it."""
        try:
            model = models.WordPiece.from_file(str(vocab_path), unk_token="[UNK]", max_input_chars_per_word=100)
        except Exception as e:
            raise TokenizerError(f"cannot read WordPiece vocabulary {vocab_path}: {e}") from None
        return cls(_finish(_assemble(model, lowercase)), lowercase)

    @classmethod
    def from_vocab_dict(cls, vocab: dict[str, int], lowercase: bool = True) -> WordPieceTokenizer:
        """A vocabulary as token -> id (e.g. the model section of a BERT tokenizer.json)."""
        model = models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100)
        return cls(_finish(_assemble(model, lowercase)), lowercase)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return self._ids["[PAD]"]

    @property
    def unk_id(self) -> int:
        return self._ids["[UNK]"]

    @property
    def cls_id(self) -> int:
        return self._ids["[CLS]"]

    @property
    def sep_id(self) -> int:
        return self._ids["[SEP]"]

    @property
    def mask_id(self) -> int:
        return self._ids["[MASK]"]

    @property
    def eos_id(self) -> int:
        return self.sep_id  # [SEP] closes a document, as in BERT's pretraining data

    def encode(self, text: str) -> list[int]:
        """Ids of the text alone, without [CLS]/[SEP]."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.hf.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_pair(self, text: str, text_pair: str | None = None) -> tuple[list[int], list[int]]:
        """[CLS] text [SEP] (text_pair [SEP]) ids and their token-type ids, as BertTokenizerFast(text, text_pair)."""
        enc = self.hf.encode(text, text_pair, add_special_tokens=True)
        return enc.ids, enc.type_ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if any(i < 0 or i >= self.vocab_size for i in ids):
            raise TokenizerError(f"token id out of range for a WordPiece vocabulary of {self.vocab_size}")
        return self.hf.decode(ids, skip_special_tokens=False)

    def vocab_lines(self) -> list[str]:
        vocab = self.hf.get_vocab()
        return sorted(vocab, key=vocab.__getitem__)

    def _vocab_txt(self) -> bytes:
        return ("\n".join(self.vocab_lines()) + "\n").encode()

    def _state(self) -> tuple[dict, dict[str, bytes]]:
        files = {TOKENIZER_FILE: self.hf.to_str().encode(), VOCAB_FILE: self._vocab_txt()}
        return {"lowercase": self.lowercase}, files

    def _hf_export(self) -> HFExport:
        # transformers 5's BertTokenizer rebuilds BERT's pipeline from the vocabulary and these settings (older ones
        # read tokenizer.json, or vocab.txt); both are ours.
        config = {"do_lower_case": self.lowercase, "strip_accents": None, "tokenize_chinese_chars": True}
        return HFExport(self.hf, "BertTokenizer", config, {VOCAB_FILE: self._vocab_txt()})

    @classmethod
    def _from_state(cls, meta: dict, files: dict[str, bytes]) -> WordPieceTokenizer:
        if TOKENIZER_FILE not in files:
            raise TokenizerError(f"saved WordPiece tokenizer lacks {TOKENIZER_FILE}")
        return cls(HFTokenizer.from_str(files[TOKENIZER_FILE].decode()), meta["lowercase"])
