"""Tokenizers behind one interface (`Tokenizer`): char, SentencePiece, WordPiece, and any Hugging Face tokenizer.json."""

from data_pipelines.tokenizers.base import HFExport, Tokenizer, load_tokenizer, tokenizer_from_files
from data_pipelines.tokenizers.char import CharTokenizer
from data_pipelines.tokenizers.chat import ChatTokenizer, with_chat_template
from data_pipelines.tokenizers.huggingface import HFTokenizer, load_hf_tokenizer
from data_pipelines.tokenizers.sentencepiece import SentencePieceTokenizer
from data_pipelines.tokenizers.wordpiece import WordPieceTokenizer

TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
    SentencePieceTokenizer.kind: SentencePieceTokenizer,
    WordPieceTokenizer.kind: WordPieceTokenizer,
    HFTokenizer.kind: HFTokenizer,
    ChatTokenizer.kind: ChatTokenizer,
}

__all__ = [
    "CharTokenizer",
    "ChatTokenizer",
    "HFExport",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "TOKENIZER_KINDS",
    "Tokenizer",
    "WordPieceTokenizer",
    "load_hf_tokenizer",
    "load_tokenizer",
    "tokenizer_from_files",
    "with_chat_template",
]
