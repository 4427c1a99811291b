"""Token classification data (named entities, chunks): tagged sentences -> validated tags -> sub-token labels -> batches.

Files read:
- CoNLL-style text: one word a line, its tag in the last column (tab- or space-separated), blank lines between
  sentences, `-DOCSTART-` lines skipped;
- JSONL: {"tokens": [...], "tags": [...]} a line (tags as names, or as ids with `tag_names` given).

Words are joined with single spaces and tokenized as one text (the text `pipeline()` sees at inference); each token
belongs to the word its character span overlaps. As Hugging Face's run_ner.py: a word's label goes on its first token,
its other tokens get IGNORE_INDEX, or with label_all_subtokens the word's label (B-X turned into I-X).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.errors import DataError
from data_pipelines.tokenizers import Tokenizer

DOCSTART = "-DOCSTART-"
SCHEMES = ("IOB1", "IOB2", "IOBES")


@dataclass
class TaggedSentences:
    path: Path
    words: list[list[str]]
    tags: list[list[str]]
    where: list[list[str]]  # per word: "file:line" (CoNLL) or "file:line word k" (JSONL), for error messages

    def __len__(self) -> int:
        return len(self.words)


def read_tagged(path: str | Path, tag_names: list[str] | None = None) -> TaggedSentences:
    """Read a CoNLL-style (.conll, .txt, .tsv, ... ) or JSONL (.jsonl, .json) file of tagged sentences.
    tag_names: how integer tags in JSONL map to names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"token classification file not found: {path} (expected CoNLL-style text or JSONL)")
    try:
        with path.open(encoding="utf-8") as f:  # lines end at newlines only (str.splitlines also splits at U+2028)
            lines = enumerate((line.rstrip("\r\n") for line in f), start=1)
            jsonl = path.suffix.lower() in (".jsonl", ".json")
            sentences = _read_jsonl(path, lines, tag_names) if jsonl else _read_conll(path, lines)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    if not sentences.words:
        raise DataError(f"{path} holds no tagged sentences")
    return sentences


def _read_conll(path: Path, lines: Iterator[tuple[int, str]]) -> TaggedSentences:
    out = TaggedSentences(path, [], [], [])
    words: list[str] = []
    tags: list[str] = []
    where: list[str] = []
    for line_number, line in lines:
        columns = line.split("\t") if "\t" in line else line.split()
        columns = [c.strip() for c in columns]
        if not any(columns) or columns[0] == DOCSTART:
            if words:
                out.words.append(words)
                out.tags.append(tags)
                out.where.append(where)
            words, tags, where = [], [], []
            continue
        if len(columns) < 2 or not columns[-1] or not columns[0]:
            raise DataError(f"{path}:{line_number}: expected a word and its tag in the last column (tab- or "
                            f"space-separated), got {line!r}")
        words.append(columns[0])
        tags.append(columns[-1])
        where.append(f"{path}:{line_number}")
    if words:
        out.words.append(words)
        out.tags.append(tags)
        out.where.append(where)
    return out


def _read_jsonl(path: Path, lines: Iterator[tuple[int, str]], tag_names: list[str] | None) -> TaggedSentences:
    out = TaggedSentences(path, [], [], [])
    for line_number, raw in lines:
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_number}: not a JSON object: {e.msg}") from None
        words, tags = (row.get("tokens"), row.get("tags")) if isinstance(row, dict) else (None, None)
        if not isinstance(words, list) or not isinstance(tags, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f'{path}:{line_number}: expected {{"tokens": [words], "tags": [tags]}}, got {raw[:200]!r}')
        if len(words) != len(tags):
            raise DataError(f"{path}:{line_number}: {len(words)} tokens but {len(tags)} tags; every token needs a tag")
        if not words:
            continue
        names = [_tag_name(t, tag_names, f"{path}:{line_number} word {k}") for k, t in enumerate(tags)]
        out.words.append(words)
        out.tags.append(names)
        out.where.append([f"{path}:{line_number} word {k}" for k in range(len(words))])
    return out


def _tag_name(tag, tag_names: list[str] | None, where: str) -> str:
    if isinstance(tag, str) and tag:
        return tag
    if isinstance(tag, int) and not isinstance(tag, bool):
        if tag_names is None or not 0 <= tag < len(tag_names):
            raise DataError(f"{where}: integer tag {tag} needs tag names to map it (e.g. the training labels)")
        return tag_names[tag]
    raise DataError(f"{where}: a tag must be a name (or an integer id), got {tag!r}")


def tag_names(train: TaggedSentences) -> list[str]:
    """The label set: the training tags, sorted (as run_ner.py's get_label_list)."""
    return sorted({t for sentence in train.tags for t in sentence})


def tag_ids(sentences: TaggedSentences, names: list[str]) -> list[np.ndarray]:
    """Per-word label ids; a tag the label set lacks is an error naming its line."""
    index = {name: i for i, name in enumerate(names)}
    out = []
    for tags, where in zip(sentences.tags, sentences.where, strict=True):
        for tag, place in zip(tags, where, strict=True):
            if tag not in index:
                raise DataError(f"{place}: tag {tag!r} never occurs in the training data (known tags: {names})")
        out.append(np.array([index[t] for t in tags], dtype=np.int64))
    return out


def detect_scheme(sentences: TaggedSentences) -> str:
    """IOB1, IOB2 or IOBES, from how entities start; a file mixing schemes is an error naming a line of each. Tags
    are PREFIX-TYPE (B-PER) or O."""
    evidence: dict[str, str] = {}  # scheme -> the first place that shows it, in order of appearance
    for tags, where in zip(sentences.tags, sentences.where, strict=True):
        previous = ("O", "")
        for tag, place in zip(tags, where, strict=True):
            prefix, kind = _split_tag(tag, place)
            continues = previous[0] in ("B", "I") and previous[1] == kind
            if prefix in ("E", "S"):
                evidence.setdefault("IOBES", place)
            elif prefix == "I" and not continues:
                evidence.setdefault("IOB1", place)  # an entity that starts with I-
            elif prefix == "B" and not continues:
                evidence.setdefault("IOB2", place)  # B- after O or another type, where IOB1 writes I-
            previous = (prefix, kind)
    if "IOB1" in evidence and ("IOB2" in evidence or "IOBES" in evidence):
        first, second = [s for s in evidence if s != ("IOB2" if "IOBES" in evidence else "IOBES")][:2]
        raise DataError(f"{evidence[second]}: {_SHOWS[second]}, but {evidence[first]}: {_SHOWS[first]}; mixed IOB "
                        f"schemes: use one of {', '.join(SCHEMES)} throughout")
    return next((s for s in ("IOBES", "IOB1") if s in evidence), "IOB2")


_SHOWS = {
    "IOB1": "an entity starts with I- (IOB1)",
    "IOB2": "an entity starts with B- after O or another type (IOB2)",
    "IOBES": "E-/S- tags (IOBES)",
}


def _split_tag(tag: str, where: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    if prefix not in ("B", "I", "E", "S") or not kind:
        raise DataError(f"{where}: tag {tag!r} is neither O nor PREFIX-TYPE with a prefix of B, I, E or S "
                        f"(schemes {', '.join(SCHEMES)})")
    return prefix, kind


# ---- tokens and labels -----------------------------------------------------------------------------------------------


@dataclass
class EncodedSentence:
    input_ids: list[int]
    word_ids: list[int | None]  # the word each token belongs to; None: [CLS]/[SEP] or a whitespace-only token
    offsets: list[tuple[int, int] | None]  # character spans in `text`; None for [CLS]/[SEP]
    text: str  # the words joined by single spaces
    word_spans: list[tuple[int, int]]


def encode_words(tokenizer: Tokenizer, words: list[str], max_seq_len: int,
                 add_special_tokens: bool = True) -> EncodedSentence:
    """Tokens of the words joined by spaces, at most max_seq_len of them (the last words are cut first), framed by
    [CLS] ... [SEP] when add_special_tokens."""
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    text = " ".join(words)
    ids, offsets = tokenizer.encode_with_offsets(text)
    word_ids = token_word_ids(offsets, spans, len(text))
    spans_out: list[tuple[int, int] | None] = list(offsets)
    if add_special_tokens:
        if tokenizer.cls_id is None or tokenizer.sep_id is None:
            raise DataError(f"add_special_tokens needs [CLS] and [SEP] tokens; the {tokenizer.kind} tokenizer has none")
        keep = max_seq_len - 2
        ids = [tokenizer.cls_id, *ids[:keep], tokenizer.sep_id]
        word_ids = [None, *word_ids[:keep], None]
        spans_out = [None, *spans_out[:keep], None]
    else:
        ids, word_ids, spans_out = ids[:max_seq_len], word_ids[:max_seq_len], spans_out[:max_seq_len]
    return EncodedSentence(ids, word_ids, spans_out, text, spans)


def token_word_ids(offsets: list[tuple[int, int]], word_spans: list[tuple[int, int]], text_length: int
                   ) -> list[int | None]:
    """The word each token belongs to: the first word its span overlaps (None: it spans only whitespace)."""
    owner = np.full(text_length + 1, -1, dtype=np.int64)  # character -> word, -1 between words
    for w, (start, end) in enumerate(word_spans):
        owner[start:end] = w
    word_ids: list[int | None] = []
    for start, end in offsets:
        inside = owner[start:end]
        inside = inside[inside >= 0]
        word_ids.append(int(inside[0]) if inside.size else None)
    return word_ids


def whitespace_words(text: str) -> list[tuple[int, int]]:
    """Spans of the whitespace-separated words of a raw text (the words of `pipeline()` input)."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def align_labels(word_ids: list[int | None], word_labels: np.ndarray, label_all_subtokens: bool = False,
                 b_to_i: list[int] | None = None) -> list[int]:
    """run_ner.py's tokenize_and_align_labels: the word's label on its first token; later tokens of the word get
    IGNORE_INDEX, or (label_all_subtokens) the word's label through b_to_i (B-X -> I-X); tokens of no word are
    ignored."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(int(word_labels[word]))
        elif label_all_subtokens:
            label = int(word_labels[word])
            labels.append(b_to_i[label] if b_to_i is not None else label)
        else:
            labels.append(IGNORE_INDEX)
        previous = word
    return labels


def b_to_i_labels(names: list[str]) -> list[int]:
    """For each label id, the id of its I- form when it is a B- tag with an I- tag in the set (else itself)."""
    index = {name: i for i, name in enumerate(names)}
    return [index.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(names)]


class TokenClassificationExamples:
    """Encoded sentences, indexed by a batch of sentence indices; returns a right-padded batch dict. A negative index
    (evaluation padding, sampling.PAD_KEY) gives the first sentence with every label ignored."""

    def __init__(self, encoded: list[EncodedSentence], labels: list[list[int]], pad_id: int):
        self.encoded = encoded
        self.labels = labels
        self.pad_id = pad_id

    @classmethod
    def build(cls, tokenizer: Tokenizer, sentences: TaggedSentences, names: list[str], max_seq_len: int,
              label_all_subtokens: bool = False, add_special_tokens: bool = True) -> TokenClassificationExamples:
        ids = tag_ids(sentences, names)
        b_to_i = b_to_i_labels(names)
        encoded = [encode_words(tokenizer, words, max_seq_len, add_special_tokens) for words in sentences.words]
        labels = [align_labels(e.word_ids, y, label_all_subtokens, b_to_i) for e, y in zip(encoded, ids, strict=True)]
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
        return cls(encoded, labels, pad)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = [max(i, 0) for i in indices]
        length = max(len(self.encoded[i].input_ids) for i in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for row, (i, original) in enumerate(zip(rows, indices, strict=True)):
            n = len(self.encoded[i].input_ids)
            input_ids[row, :n] = torch.tensor(self.encoded[i].input_ids)
            attention_mask[row, :n] = 1
            if original >= 0:
                labels[row, :n] = torch.tensor(self.labels[i])
        return {
            "input_ids": input_ids,
            "token_type_ids": torch.zeros_like(input_ids),
            "attention_mask": attention_mask,
            "labels": labels,
        }

