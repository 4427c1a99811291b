"""Data-building steps several task units share (not a task itself: it defines no TrainingTask)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock

from data_pipelines.prepare import build_tokenizer, publish_dir
from data_pipelines.sources import open_corpus
from data_pipelines.tokenizers import Tokenizer
from gptframe.errors import ConfigError, TokenizerError
from gptframe.models.factory import resolve_vocab_size
from gptframe.registry import architecture_of


def sized_for(model_config, tokenizer: Tokenizer):
    """The model config with its vocab size from the tokenizer (see factory.resolve_vocab_size)."""
    try:
        return resolve_vocab_size(model_config, tokenizer)
    except ValueError as e:
        raise TokenizerError(str(e)) from None


def context_length(model_config) -> int:
    return architecture_of(model_config).context_length(model_config)


def example_length(requested: int | None, model_config, key: str = "task.max_seq_len") -> int:
    """A task's example length: the requested one (None: the model's context), which must fit the context."""
    context = context_length(model_config)
    length = requested or context
    if length > context:
        raise ConfigError(f"{key}={length} exceeds the model's context of {context} positions")
    return length


def require_train_val(cfg, formats: str) -> tuple[str, str]:
    """(data.train_path, data.val_path) of a fine-tuning task on labeled files; both must be given."""
    if not cfg.data.train_path or not cfg.data.val_path:
        raise ConfigError(f"task={cfg.task.name} needs data.train_path and data.val_path ({formats})")
    return cfg.data.train_path, cfg.data.val_path


def tokenizer_for_file(cfg, path: str) -> Tokenizer:
    """Training from scratch on labeled files: tokenizer.path, or a tokenizer trained on `path`'s texts."""
    corpus = open_corpus(path, "auto", cfg.data.text_column)
    splits = corpus.split(cfg.data.val_fraction, cfg.data.split_seed)
    cache_dir = Path(os.path.expanduser(cfg.data.cache_dir)).resolve()
    settings = {"val_fraction": cfg.data.val_fraction, "seed": cfg.data.split_seed}
    return build_tokenizer(cfg.tokenizer, corpus, splits, cache_dir, settings)


def tokenizer_for_texts(cfg, texts: Iterable[str], what: str) -> Tokenizer:
    """Training from scratch on files no corpus reader opens (e.g. SQuAD JSON): tokenizer.path, or a tokenizer
    trained on `texts`, written once as a text file in the data cache (named by its content, so runs share it)."""
    body = "\n".join(texts) + "\n"
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:20]
    target = Path(os.path.expanduser(cfg.data.cache_dir)).resolve() / "task_texts" / f"{what}-{digest}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # ranks of one run build it once
        if not target.is_dir():
            publish_dir(target, lambda tmp: (tmp / "texts.txt").write_text(body, encoding="utf-8"))
    return tokenizer_for_file(cfg, str(target / "texts.txt"))


def describe_corpus(prepared) -> str:
    return f"{prepared.num_tokens('train'):,} train / {prepared.num_tokens('val'):,} val tokens"
