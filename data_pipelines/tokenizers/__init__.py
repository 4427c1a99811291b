"""Tokenizers behind one interface (`Tokenizer`): char, SentencePiece, WordPiece."""

from data_pipelines.tokenizers.base import Tokenizer, load_tokenizer, tokenizer_from_files
from data_pipelines.tokenizers.char import CharTokenizer
from data_pipelines.tokenizers.sentencepiece import SentencePieceTokenizer
from data_pipelines.tokenizers.wordpiece import WordPieceTokenizer

TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
    SentencePieceTokenizer.kind: SentencePieceTokenizer,
    WordPieceTokenizer.kind: WordPieceTokenizer,
}

__all__ = [
    "CharTokenizer",
    "SentencePieceTokenizer",
    "TOKENIZER_KINDS",
    "Tokenizer",
    "WordPieceTokenizer",
    "load_tokenizer",
    "tokenizer_from_files",
]
