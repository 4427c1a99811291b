"""Tokenizers behind one interface (`Tokenizer`): char, SentencePiece, WordPiece, and any Hugging Face tokenizer.json.

Each kind registers itself in TOKENIZER_KINDS (base.py) when its module is imported below."""

from data_pipelines.tokenizers.base import TOKENIZER_KINDS, HFExport, Tokenizer, load_tokenizer, tokenizer_from_files
from data_pipelines.tokenizers.char import CharTokenizer
from data_pipelines.tokenizers.chat import ChatTokenizer, with_chat_template
from data_pipelines.tokenizers.huggingface import HFTokenizer, load_hf_tokenizer
from data_pipelines.tokenizers.sentencepiece import SentencePieceTokenizer
from data_pipelines.tokenizers.wordpiece import WordPieceTokenizer

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
