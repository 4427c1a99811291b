"""Typed configs of the data side: `conf/tokenizer/*.yaml` and `conf/data/*.yaml` are instances of these."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from data_pipelines.errors import DataError


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


FORMATS = ("auto", "text", "json", "parquet", "csv", "arrow")
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class SourceConfig:
    """One corpus of a mixture (`data.sources`): prepared and cached on its own, drawn from in proportion to weight."""

    name: str = "???"  # names its val loss (val/loss_<name>) and its line in the summary
    path: str = "???"  # as data.path: a file, dir, glob, `datasets` dir, or hf://owner/name[/config][@revision]
    format: str = "auto"
    text_column: str = "text"
    weight: float = 1.0  # relative share of the training tokens
    split: str = "train"  # hf:// sources: the hub split to read (gptframe splits it into train/val itself)
    streaming: bool = False  # hf:// sources: stream rows instead of caching the dataset as Arrow first

    def check(self) -> None:
        if not _SOURCE_NAME.fullmatch(self.name):
            raise ValueError(f"data.sources: name {self.name!r} must be letters, digits, '_', '.' or '-'")
        if self.format not in FORMATS:
            raise ValueError(f"data.sources[{self.name}].format must be one of {'|'.join(FORMATS)}, got {self.format!r}")
        if not self.weight >= 0:  # also rejects NaN
            raise ValueError(f"data.sources[{self.name}].weight must be >= 0, got {self.weight}")


@dataclass
class DataConfig:
    # one corpus: data.path (+ format, text_column, split); several: data.sources (then leave data.path unset)
    path: str | None = None  # a text file, a directory, a glob, json/jsonl/parquet/csv files, a `datasets` dir, or hf://
    format: str = "auto"  # auto | text | json | parquet | csv | arrow (a dataset saved with save_to_disk)
    text_column: str = "text"
    split: str = "train"  # hf:// paths: the hub split to read
    streaming: bool = False  # hf:// paths: stream rows instead of caching the dataset as Arrow first
    sources: list[SourceConfig] = field(default_factory=list)
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
    # gptframe-prepare over many processes/nodes: each rank tokenizes whole shards of this many ~1M-character work
    # units. The tokens do not depend on it (the same units, concatenated in order), only the grain of the work split.
    shard_units: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.format not in FORMATS:
            raise ValueError(f"data.format must be one of {'|'.join(FORMATS)}, got {self.format!r}")
        if self.shard_units < 1:
            raise ValueError(f"data.shard_units must be >= 1, got {self.shard_units}")
        self._check_sources()
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"data.block_size must be >= 1, got {self.block_size}")
        if self.num_proc < 0 or self.num_workers < 0:
            raise ValueError("data.num_proc and data.num_workers must be >= 0")

    def _check_sources(self) -> None:
        if self.sources and self.path not in (None, "???"):
            raise ValueError("set data.path (one corpus) or data.sources (a mixture), not both")
        names = [s.name for s in self.sources]
        for source in self.sources:
            source.check()
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"data.sources: the name {repeated[0]!r} appears more than once; names must be unique")
        if self.sources and not sum(s.weight for s in self.sources) > 0:
            raise ValueError(f"data.sources: the weights of {names} are all zero; give at least one a weight > 0")

    def resolved_sources(self) -> list[SourceConfig]:
        """The mixture to prepare: data.sources, or data.path as one source of weight 1 (named after its file)."""
        if self.sources:
            return list(self.sources)
        if self.path in (None, "???"):
            raise DataError("data.path is not set: give a corpus (data.path=...) or a mixture (data.sources=...)")
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.path.rstrip("/").split("/")[-1].split("@")[0]).strip("_.")
        return [SourceConfig(name=stem or "data", path=self.path, format=self.format, text_column=self.text_column,
                             weight=1.0, split=self.split, streaming=self.streaming)]
