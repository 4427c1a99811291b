"""Tokenizers behind one interface (`Tokenizer`): char, SentencePiece."""

from data_pipelines.tokenizers.base import Tokenizer, load_tokenizer, tokenizer_from_files
from data_pipelines.tokenizers.char import CharTokenizer
from data_pipelines.tokenizers.sentencepiece import SentencePieceTokenizer

TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
    SentencePieceTokenizer.kind: SentencePieceTokenizer,
}

__all__ = ["CharTokenizer", "SentencePieceTokenizer", "TOKENIZER_KINDS", "Tokenizer", "load_tokenizer", "tokenizer_from_files"]
