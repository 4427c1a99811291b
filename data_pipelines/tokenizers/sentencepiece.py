"""SentencePiece BPE / unigram, trained with the sentencepiece library.

Settings keep text exact: identity normalisation, no dummy prefix, whitespace kept, "\n" its own piece (so pieces never
cross lines and line-chunked tokenisation equals whole-text tokenisation), byte fallback for unseen characters.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable

import sentencepiece as spm

from data_pipelines.errors import TokenizerError
from data_pipelines.tokenizers.base import Tokenizer, sample_lines

MODEL_FILE = "tokenizer.model"
class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def from_model_proto(cls, model_proto: bytes) -> SentencePieceTokenizer:
        try:
            return cls(model_proto)
        except Exception as e:
            raise TokenizerError(f"not a valid SentencePiece model: {e}") from None

    @classmethod
    def train(
        cls,
        lines: Callable[[], Iterable[str]],
        vocab_size: int,
        model_type: str = "bpe",
        byte_fallback: bool = True,
        character_coverage: float = 1.0,
        max_training_lines: int = 2_000_000,
        num_threads: int = 2,
    ) -> SentencePieceTokenizer:
        """Train on the lines `lines()` yields (called twice: to count them, then to stream a sample)."""
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sample_lines(lines, max_training_lines),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                byte_fallback=byte_fallback,
                character_coverage=character_coverage,
                user_defined_symbols=["\n"],
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=3,
                input_sentence_size=0,  # all of the lines sample_lines picked
                shuffle_input_sentence=False,
                num_threads=num_threads,
                minloglevel=2,
            )
        except RuntimeError as e:  # e.g. "Vocabulary size is too high" on a tiny corpus
            raise TokenizerError(f"SentencePiece training failed: {e}") from None
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int | None:
        return _id_or_none(self.sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        return _id_or_none(self.sp.eos_id())

    @property
    def pad_id(self) -> int | None:
        return _id_or_none(self.sp.pad_id())

    @property
    def unk_id(self) -> int | None:
        return _id_or_none(self.sp.unk_id())

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if any(i < 0 or i >= self.vocab_size for i in ids):
            raise TokenizerError(f"token id out of range for a SentencePiece vocabulary of {self.vocab_size}")
        return self.sp.decode(ids)

    def _state(self) -> tuple[dict, dict[str, bytes]]:
        return {}, {MODEL_FILE: self.model_proto}

    @classmethod
    def _from_state(cls, meta: dict, files: dict[str, bytes]) -> SentencePieceTokenizer:
        if MODEL_FILE not in files:
            raise TokenizerError(f"saved SentencePiece tokenizer lacks {MODEL_FILE}")
        return cls.from_model_proto(files[MODEL_FILE])


def _id_or_none(i: int) -> int | None:
    return i if i >= 0 else None
