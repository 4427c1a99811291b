"""Extractive question answering data: SQuAD-style files -> validated examples -> windowed features -> batches.

Layouts read:
- SQuAD v1.1 / v2.0 JSON: {"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text",
  "answer_start"}], "is_impossible" (v2)}]}]}]};
- flat records, as JSONL or a JSON list (or {"data": [...]}) of {"id", "question", "context", "answers": {"text": [],
  "answer_start": []}} (Hugging Face datasets' squad / squad_v2 layout; no answers: unanswerable).

Features follow Hugging Face's run_qa.py (`prepare_train_features` / `prepare_validation_features`): [CLS] question
[SEP] context window [SEP], long contexts split into windows of at most max_seq_len tokens that overlap by doc_stride
tokens, start/end positions of the first answer (the [CLS] index 0 when the window does not hold it, or the question
has none), and the character span of every context token for mapping predictions back to text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.errors import DataError
from data_pipelines.sampling import PAD_KEY
from data_pipelines.tokenizers import Tokenizer

CLS_INDEX = 0  # every feature starts with [CLS]; its logits score the null answer


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answer_texts: tuple[str, ...]  # empty: unanswerable (SQuAD v2)
    answer_starts: tuple[int, ...]  # character index of each answer in context
    where: str  # "file: record" for error messages

    @property
    def is_impossible(self) -> bool:
        return not self.answer_texts


@dataclass
class QAExamples:
    path: Path
    examples: list[QAExample]
    version_2_with_negative: bool  # the file has unanswerable questions (or says it is SQuAD v2)

    def __len__(self) -> int:
        return len(self.examples)


def read_qa(path: str | Path) -> QAExamples:
    """Read and validate a QA file; every error names the file and the record."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"question-answering file not found: {path} (expected SQuAD JSON, or flat JSON / JSONL)")
    try:
        if path.suffix.lower() == ".jsonl" or _is_json_lines(path):
            records, version = _jsonl_records(path), ""
        else:
            records, version = _json_records(path, path.read_text(encoding="utf-8"))
        examples = [_validated(*record) for record in records]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    if not examples:
        raise DataError(f"{path} holds no questions")
    seen: dict[str, str] = {}
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"{ex.where}: id {ex.id!r} repeats {seen[ex.id]}; every question needs its own id")
        seen[ex.id] = ex.where
    v2 = version.startswith("v2") or any(ex.is_impossible for ex in examples)
    return QAExamples(path, examples, v2)


def _is_json_lines(path: Path) -> bool:
    """A .json file that holds one object a line (what datasets' Dataset.to_json writes)."""
    with path.open(encoding="utf-8") as f:
        first = f.readline(1 << 20).strip()  # SQuAD files are one JSON document, often on one long line
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "question" in row


def _jsonl_records(path: Path) -> Iterator[tuple[dict, str, bool]]:
    with path.open(encoding="utf-8") as f:  # lines end at newlines only (str.splitlines also splits at U+2028)
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line}: not a JSON object: {e.msg}") from None
            yield _flat(row, f"{path}:{line}")


def _json_records(path: Path, text: str) -> tuple[list[tuple[dict, str, bool]], str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}); expected SQuAD JSON or a list of "
                        "records (use .jsonl for one record a line)") from None
    version = str(data.get("version", "")) if isinstance(data, dict) else ""
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise DataError(f"{path}: expected SQuAD JSON ({{\"data\": [...]}}) or a JSON list of records")
    if items and isinstance(items[0], dict) and "paragraphs" in items[0]:
        return list(_squad_records(path, items)), version
    return [_flat(row, f"{path}: record {i}") for i, row in enumerate(items)], version


def _squad_records(path: Path, articles: list) -> Iterator[tuple[dict, str, bool]]:
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(_list(article, "paragraphs", f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            for q, qa in enumerate(_list(paragraph, "qas", where)):
                if not isinstance(qa, dict):
                    raise DataError(f"{where}.qas[{q}]: expected an object with id, question and answers")
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                    raise DataError(f"{where}.qas[{q}]: answers must be a list of {{text, answer_start}} objects")
                row = {"id": qa.get("id"), "question": qa.get("question"), "context": context,
                       "answers": {"text": [x.get("text") for x in answers],
                                   "answer_start": [x.get("answer_start") for x in answers]}}
                yield row, f"{where}.qas[{q}] (id {qa.get('id')!r})", bool(qa.get("is_impossible", False))


def _list(obj, key: str, where: str) -> list:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a {key!r} list (SQuAD layout)")
    return value


def _flat(row, where: str) -> tuple[dict, str, bool]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with id, question, context and answers")
    if "id" in row:
        where = f"{where} (id {row['id']!r})"
    return row, where, False


def _validated(row: dict, where: str, marked_impossible: bool) -> QAExample:
    if not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool):
        raise DataError(f"{where}: needs an 'id' (a string), got {row.get('id')!r}")
    for key in ("question", "context"):
        if not isinstance(row.get(key), str):
            raise DataError(f"{where}: needs a string {key!r}, got {row.get(key)!r}")
    answers = row.get("answers")
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list):
        raise DataError(f"{where}: answers must be {{\"text\": [...], \"answer_start\": [...]}}, got {answers!r}")
    texts, starts = answers["text"], answers["answer_start"]
    if len(texts) != len(starts):
        raise DataError(f"{where}: {len(texts)} answer texts but {len(starts)} answer_start values")
    if marked_impossible and texts:
        raise DataError(f"{where}: is_impossible is true but the question has {len(texts)} answers")
    context = row["context"]
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool):
            raise DataError(f"{where}: an answer needs a non-empty text and an integer answer_start, got "
                            f"{text!r} at {start!r}")
        if context[start : start + len(text)] != text:
            raise DataError(f"{where}: answer_start {start} points at {context[start : start + len(text)]!r}, "
                            f"not at the answer {text!r} (answer_start is the answer's character index in context)")
    return QAExample(str(row["id"]), row["question"], context, tuple(texts), tuple(starts), where)


@dataclass
class QAFeatures:
    """One entry per window. `offsets[i][k]`: the context span of token k, None outside the context."""

    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] = field(default_factory=list)
    offsets: list[list[tuple[int, int] | None]] = field(default_factory=list)
    example_index: list[int] = field(default_factory=list)  # the example (in the examples given) it comes from
    start_positions: list[int] = field(default_factory=list)
    end_positions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def features_of(self, num_examples: int) -> list[list[int]]:
        """Feature indices of each example, in window order."""
        groups: list[list[int]] = [[] for _ in range(num_examples)]
        for i, example in enumerate(self.example_index):
            groups[example].append(i)
        return groups


def build_qa_features(
    examples: list[QAExample], tokenizer: Tokenizer, max_seq_len: int, doc_stride: int
) -> QAFeatures:
    """Windowed features of every example (see the module docstring)."""
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise DataError(f"question answering needs [CLS] and [SEP] tokens; the {tokenizer.kind} tokenizer has none")
    features = QAFeatures()
    contexts: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}  # SQuAD asks ~5 questions per paragraph
    for index, example in enumerate(examples):
        question = tokenizer.encode(example.question.lstrip())  # as run_qa: leading spaces only cost tokens
        if example.context not in contexts:
            ids, spans = tokenizer.encode_with_offsets(example.context)
            contexts[example.context] = ids, _trim_leading_whitespace(example.context, spans)
        context, offsets = contexts[example.context]
        budget = max_seq_len - len(question) - 3  # context tokens per window, after [CLS] q [SEP] ... [SEP]
        if budget <= 0:
            raise DataError(f"{example.where}: the question takes {len(question)} tokens, leaving no room for context "
                            f"in max_seq_len={max_seq_len} tokens")
        if len(context) > budget and budget <= doc_stride:
            raise DataError(
                f"{example.where}: a context of {len(context)} tokens needs several windows, but with a question of "
                f"{len(question)} tokens and max_seq_len={max_seq_len} a window holds {max(budget, 0)} context "
                f"tokens, not more than doc_stride={doc_stride}, so windows cannot advance; doc_stride must be "
                "smaller than max_seq_len minus the question and 3 special tokens"
            )
        for start, stop in context_windows(len(context), budget, doc_stride):
            _add_window(features, tokenizer, example, index, question, context[start:stop], offsets[start:stop])
    return features


def context_windows(num_tokens: int, budget: int, doc_stride: int) -> list[tuple[int, int]]:
    """[start, stop) token ranges of at most `budget` tokens, each starting budget - doc_stride tokens after the
    previous, until one reaches the end: the windows `tokenizers` makes with truncation="only_second", stride."""
    windows, start = [], 0
    while True:
        stop = min(start + budget, num_tokens)
        windows.append((start, stop))
        if stop >= num_tokens:
            return windows
        start += budget - doc_stride


def _trim_leading_whitespace(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans without the whitespace a token carries in front ('▁the', 'Ġthe' -> 'the'), so answers start at a word,
    as byte-level BPE's trim_offsets does; WordPiece spans have none. A whitespace-only token spans nothing."""
    trimmed = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        trimmed.append((start, end))
    return trimmed


def _add_window(features: QAFeatures, tokenizer: Tokenizer, example: QAExample, index: int, question: list[int],
                window: list[int], window_offsets: list[tuple[int, int]]) -> None:
    first = len(question) + 2  # index of the window's first context token
    features.input_ids.append([tokenizer.cls_id, *question, tokenizer.sep_id, *window, tokenizer.sep_id])
    features.token_type_ids.append([0] * first + [1] * (len(window) + 1))
    features.offsets.append([None] * first + list(window_offsets) + [None])
    features.example_index.append(index)
    start, end = answer_positions(example, window_offsets)
    features.start_positions.append(CLS_INDEX if start is None else first + start)
    features.end_positions.append(CLS_INDEX if end is None else first + end)


def answer_positions(example: QAExample, offsets: list[tuple[int, int]]) -> tuple[int | None, int | None]:
    """The first answer's first and last token within a window's context spans, or (None, None) when the window does
    not hold all of it (or there is none). run_qa's search, except that the start search stops at the window's end
    (run_qa walks on into [SEP], whose span (0, 0) it takes for context, when the answer starts in the last token)."""
    if example.is_impossible or not offsets:
        return None, None
    start_char = example.answer_starts[0]
    end_char = start_char + len(example.answer_texts[0])
    if not (offsets[0][0] <= start_char and offsets[-1][1] >= end_char):
        return None, None
    start = 0
    while start < len(offsets) and offsets[start][0] <= start_char:
        start += 1
    end = len(offsets) - 1
    while end >= 0 and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


class QAFeatureDataset:
    """Indexed by a batch of feature indices; returns a right-padded batch dict. A negative index (evaluation
    padding, sampling.PAD_KEY) gives the first feature with ignored positions and feature_index -1."""

    def __init__(self, features: QAFeatures, pad_id: int):
        self.features = features
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        f = self.features
        rows = [max(i, 0) for i in indices]
        length = max(len(f.input_ids[i]) for i in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(rows), length), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for row, i in enumerate(rows):
            n = len(f.input_ids[i])
            input_ids[row, :n] = torch.tensor(f.input_ids[i])
            token_type_ids[row, :n] = torch.tensor(f.token_type_ids[i])
            attention_mask[row, :n] = 1
        padding = torch.tensor([i < 0 for i in indices])
        starts = torch.tensor([f.start_positions[i] for i in rows])
        ends = torch.tensor([f.end_positions[i] for i in rows])
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "start_positions": starts.masked_fill(padding, IGNORE_INDEX),
            "end_positions": ends.masked_fill(padding, IGNORE_INDEX),
            "feature_index": torch.tensor(indices).clamp(min=PAD_KEY),
        }


def grouped_rank_share(groups: list[list[int]], rank: int, world_size: int) -> np.ndarray:
    """This rank's feature indices for evaluation: the features of every world_size-th example from `rank`, so an
    example's windows all meet on one rank (post-processing needs them together, and its scores then only need
    summing across ranks), padded with PAD_KEY to the largest share so that every rank runs as many batches."""
    shares = [[i for group in groups[r::world_size] for i in group] for r in range(world_size)]
    longest = max(len(share) for share in shares)
    mine = shares[rank]
    return np.array(mine + [PAD_KEY] * (longest - len(mine)), dtype=np.int64)

