"""Typed configs of the data side: `conf/tokenizer/*.yaml` and `conf/data/*.yaml` are instances of these."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenizerConfig:
    kind: str = "sentencepiece"  # char | sentencepiece | wordpiece
    path: str | None = None  # load instead of training: a saved tokenizer dir, a SentencePiece .model, a vocab.txt
    vocab_size: int = 2048  # sentencepiece / wordpiece: size to train
    lowercase: bool = True  # wordpiece: uncased (lowercase, strip accents), as bert-base-uncased
    model_type: str = "bpe"  # sentencepiece: bpe | unigram
    byte_fallback: bool = True  # sentencepiece: unseen characters become UTF-8 bytes, never <unk>
    character_coverage: float = 1.0
    max_training_lines: int = 2_000_000  # trainers see a seeded sample of at most this many lines

    def __post_init__(self) -> None:
        if self.kind not in ("char", "sentencepiece", "wordpiece"):
            raise ValueError(f"tokenizer.kind must be 'char', 'sentencepiece' or 'wordpiece', got {self.kind!r}")
        if self.model_type not in ("bpe", "unigram"):
            raise ValueError(f"tokenizer.model_type must be 'bpe' or 'unigram', got {self.model_type!r}")
        if self.vocab_size < 8:
            raise ValueError(f"tokenizer.vocab_size must be >= 8, got {self.vocab_size}")


@dataclass
class DataConfig:
    path: str = "???"  # a text file, a directory, a glob, json/jsonl/parquet/csv files, or a `datasets` dir
    format: str = "auto"  # auto | text | json | parquet | csv | arrow (a dataset saved with save_to_disk)
    text_column: str = "text"
    # labeled data (task=classification): CSV, TSV or JSONL files with text, optional text pair, and label columns
    train_path: str | None = None
    val_path: str | None = None
    text_pair_column: str | None = "text_pair"  # used when the files have it
    label_column: str = "label"
    val_fraction: float = 0.1  # by document; a single document is split contiguously (as nanoGPT)
    split_seed: int = 1337
    cache_dir: str = "~/.cache/gptframe"
    num_proc: int = 0  # tokenizer processes; 0 = one per core (at most 8)
    batch_size: int = 12  # sequences per device per micro-batch
    block_size: int | None = None  # sequence length; None = the model's context length
    num_workers: int = 0  # DataLoader worker processes

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.format not in ("auto", "text", "json", "parquet", "csv", "arrow"):
            raise ValueError(f"data.format must be one of auto|text|json|parquet|csv|arrow, got {self.format!r}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"data.block_size must be >= 1, got {self.block_size}")
        if self.num_proc < 0 or self.num_workers < 0:
            raise ValueError("data.num_proc and data.num_workers must be >= 0")
