"""Labeled data for fine-tuning: CSV / TSV / JSONL files with a text column, an optional text-pair column and a label
column (names or ints), turned into padded batches for encoders ([CLS] A [SEP] B [SEP]) or decoders (A [EOS] B).

Labels map to ids in sorted order of the training labels (ints numerically); the names travel with the checkpoint.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.errors import DataError
from data_pipelines.tokenizers import Tokenizer, WordPieceTokenizer

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass
class LabeledExamples:
    path: Path
    texts: list[str]
    pairs: list[str] | None
    labels: list[str]  # as written in the file, as strings


def read_labeled(
    path: str | Path, text_column: str, text_pair_column: str | None, label_column: str
) -> LabeledExamples:
    """Read a labeled file; errors name the file, the line and what is expected."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"labeled data file not found: {path} (expected a .csv, .tsv or .jsonl file)")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown labeled-data format {path.suffix!r}; expected .csv, .tsv or .jsonl")
    try:
        rows = list(_rows(path, kind))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    if not rows:
        raise DataError(f"{path} holds no examples")
    columns = set(rows[0][1])
    for column, what in ((text_column, "data.text_column"), (label_column, "data.label_column")):
        if column not in columns:
            raise DataError(f"{path} has no {column!r} column ({what}); its columns are {sorted(columns)}")
    use_pairs = bool(text_pair_column) and text_pair_column in columns
    texts, pairs, labels = [], [] if use_pairs else None, []
    for line, row in rows:
        text, label = row.get(text_column), row.get(label_column)
        if not isinstance(text, str) or label is None or str(label).strip() == "":
            raise DataError(
                f"{path}:{line}: needs a text in {text_column!r} and a label in {label_column!r}, got {row}"
            )
        texts.append(text)
        labels.append(str(label).strip())
        if pairs is not None:
            pair = row.get(text_pair_column)
            pairs.append("" if pair is None else str(pair))
    return LabeledExamples(path, texts, pairs, labels)


def _rows(path: Path, kind: str) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8", newline="") as f:
        if kind == "jsonl":
            for line, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line}: not a JSON object: {e.msg}") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{line}: expected a JSON object per line, got {type(row).__name__}")
                yield line, row
        else:
            reader = csv.DictReader(f, delimiter="\t" if kind == "tsv" else ",")
            for row in reader:
                yield reader.line_num, row


def label_names(train_labels: list[str]) -> list[str]:
    """Sorted label names: numerically when every label is an integer, else as strings."""
    unique = set(train_labels)
    if all(_is_int(v) for v in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def label_ids(examples: LabeledExamples, names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(examples.labels) - set(index))
    if unknown:
        raise DataError(
            f"{examples.path}: labels {unknown[:5]} never occur in the training data (known labels: {names}); "
            "every validation label must appear in training"
        )
    return np.array([index[v] for v in examples.labels], dtype=np.int64)


def encode_examples(
    tokenizer: Tokenizer, texts: list[str], pairs: list[str] | None, max_len: int, cls_sep: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """(ids, token type ids) per example, truncated to max_len. cls_sep (encoders, BERT): [CLS] A [SEP] (B [SEP]),
    the longer segment trimmed first; else (decoders): A (EOS B), keeping the beginning."""
    ids_out, types_out = [], []
    for i, text in enumerate(texts):
        pair = pairs[i] if pairs is not None else None
        a = tokenizer.encode(text)
        b = tokenizer.encode(pair) if pair else None
        if cls_sep:
            if not isinstance(tokenizer, WordPieceTokenizer) and tokenizer.cls_id is None:
                raise DataError(f"an encoder classifier needs [CLS]/[SEP] tokens; the {tokenizer.kind} tokenizer has none")
            a, b = _truncate_pair(a, b, max_len - (3 if b is not None else 2))
            ids = [tokenizer.cls_id, *a, tokenizer.sep_id]
            types = [0] * len(ids)
            if b is not None:
                ids += [*b, tokenizer.sep_id]
                types += [1] * (len(b) + 1)
        else:
            ids = a if b is None else [*a, _separator(tokenizer), *b]
            ids = ids[:max_len] or [_separator(tokenizer)]
            types = [0] * len(ids)
        ids_out.append(ids)
        types_out.append(types)
    return ids_out, types_out


def _separator(tokenizer: Tokenizer) -> int:
    return tokenizer.eos_id if tokenizer.eos_id is not None else 0


def _truncate_pair(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    a, b = list(a), (list(b) if b is not None else None)
    while len(a) + (len(b) if b else 0) > budget:
        if b and len(b) > len(a):
            b.pop()
        else:
            a.pop()
    return a, b


class EpochBatchSampler:
    """Shuffled epochs as an endless, resumable stream of batches: global batch k of epoch e comes from a permutation
    seeded by (seed, e); each rank takes its slice. The last batch of an epoch wraps to its start, so every rank
    gets full batches."""

    def __init__(
        self, num_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_batch: int = 0
    ):
        self.n = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.global_batch_size = batch_size * world_size
        self.batches_per_epoch = -(-num_examples // self.global_batch_size)

    def global_batch(self, b: int) -> np.ndarray:
        """The example indices of global batch b (all ranks' slices, rank 0 first)."""
        epoch, k = divmod(b, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        order = np.concatenate([order, order[: self.global_batch_size]])  # wrap the last batch
        return order[k * self.global_batch_size : (k + 1) * self.global_batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start_batch
        while True:
            yield self.global_batch(b)[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()
            b += 1


class EncodedExamples:
    """Indexed by a batch of example indices; returns a right-padded batch dict."""

    def __init__(self, ids: list[list[int]], types: list[list[int]], labels: np.ndarray, pad_id: int):
        self.ids = ids
        self.types = types
        self.labels = labels
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Negative indices (evaluation padding, sampling.PAD_KEY) give the first example with an ignored label."""
        padding = [i < 0 for i in indices]
        indices = [max(i, 0) for i in indices]
        length = max(len(self.ids[i]) for i in indices)
        input_ids = torch.full((len(indices), length), self.pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(indices), length), dtype=torch.long)
        attention_mask = torch.zeros((len(indices), length), dtype=torch.long)
        for row, i in enumerate(indices):
            n = len(self.ids[i])
            input_ids[row, :n] = torch.tensor(self.ids[i])
            token_type_ids[row, :n] = torch.tensor(self.types[i])
            attention_mask[row, :n] = 1
        labels = torch.from_numpy(self.labels[indices]).long()
        labels[torch.tensor(padding)] = IGNORE_INDEX
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "labels": labels,
        }
