"""Token classification evaluation and inference helpers, framework-free, shared by the training task and
`pipeline()`:

- entity-level precision / recall / F1 exactly as `seqeval` computes them (its own entity extraction: default mode,
  conlleval-like, or strict mode with a scheme: IOB1, IOB2, IOBES), kept as per-type counts that sum across batches
  and ranks, plus token accuracy;
- `aggregate_entities`: transformers' token-classification pipeline post-processing (aggregation_strategy none,
  simple, first, max, average) as a pure function of token strings, character spans and per-token scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB1, IOB2, IOBES, Entities

from data_pipelines.datasets import IGNORE_INDEX

STRICT_SCHEMES = {"IOB1": IOB1, "IOB2": IOB2, "IOBES": IOBES}


def entity_types(names: Sequence[str]) -> list[str]:
    """Sorted entity types of a label set (B-PER, I-PER -> PER)."""
    return sorted({n.split("-", 1)[1] for n in names if n != "O" and "-" in n})


@dataclass
class EntityCounts:
    """Per entity type: true positives, predicted and gold entities; and tokens right / counted. Adding counts of
    disjoint sentence sets gives the counts of their union, so ranks sum them (e.g. one all-reduce of `as_array`)."""

    types: list[str]
    counts: np.ndarray  # [len(types), 3]: true positives, predicted, gold
    tokens_correct: int = 0
    tokens_total: int = 0

    @classmethod
    def zeros(cls, types: Sequence[str]) -> EntityCounts:
        return cls(list(types), np.zeros((len(types), 3), dtype=np.int64))

    def __add__(self, other: EntityCounts) -> EntityCounts:
        if self.types != other.types:
            raise ValueError(f"cannot add counts over entity types {self.types} and {other.types}")
        return EntityCounts(self.types, self.counts + other.counts, self.tokens_correct + other.tokens_correct,
                            self.tokens_total + other.tokens_total)

    def as_array(self) -> np.ndarray:
        """All counts in one int64 vector (for an all-reduce); `from_array` reads it back."""
        return np.concatenate([self.counts.ravel(), [self.tokens_correct, self.tokens_total]]).astype(np.int64)

    @classmethod
    def from_array(cls, types: Sequence[str], array) -> EntityCounts:
        array = np.asarray(array, dtype=np.int64)
        return cls(list(types), array[:-2].reshape(len(types), 3), int(array[-2]), int(array[-1]))


def count_entities(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], types: Sequence[str],
                   mode: str = "default", scheme: str | None = None) -> EntityCounts:
    """Entity counts of tag sequences (one per sentence). mode "default": seqeval's default (lenient, conlleval);
    "strict": seqeval's strict mode under `scheme` (IOB1, IOB2 or IOBES), where an entity must be well formed."""
    if len(y_true) != len(y_pred) or any(len(t) != len(p) for t, p in zip(y_true, y_pred, strict=True)):
        raise ValueError("true and predicted tag sequences differ in length")
    out = EntityCounts.zeros(types)
    row = {t: i for i, t in enumerate(types)}
    true_sets, pred_sets = _entities(y_true, mode, scheme), _entities(y_pred, mode, scheme)
    for kind in set(true_sets) | set(pred_sets):
        if kind not in row:
            raise ValueError(f"entity type {kind!r} is not among the label set's types {list(types)}")
        gold, predicted = true_sets.get(kind, set()), pred_sets.get(kind, set())
        out.counts[row[kind]] += (len(gold & predicted), len(predicted), len(gold))
    out.tokens_correct = sum(t == p for ts, ps in zip(y_true, y_pred, strict=True) for t, p in zip(ts, ps, strict=True))
    out.tokens_total = sum(len(t) for t in y_true)
    return out


def _entities(sequences: Sequence[Sequence[str]], mode: str, scheme: str | None) -> dict[str, set]:
    found: dict[str, set] = {}
    if mode == "default":
        for sentence, tags in enumerate(sequences):
            for kind, start, end in get_entities(list(tags)):
                found.setdefault(kind, set()).add((sentence, start, end))
    elif mode == "strict":
        if scheme not in STRICT_SCHEMES:
            raise ValueError(f"strict mode needs a scheme, one of {sorted(STRICT_SCHEMES)}; got {scheme!r}")
        for entity in (e for sentence in Entities([list(s) for s in sequences], STRICT_SCHEMES[scheme]).entities
                       for e in sentence):
            found.setdefault(entity.tag, set()).add(entity.to_tuple())
    else:
        raise ValueError(f"mode must be 'default' or 'strict', got {mode!r}")
    return found


def entity_scores(counts: EntityCounts) -> dict[str, float]:
    """precision, recall, f1 (micro over entity types, as seqeval's default average), accuracy (tokens), and
    per type {TYPE}_precision / _recall / _f1 / _support. An undefined ratio (0/0) is 0, as seqeval reports it."""
    tp, predicted, gold = counts.counts.sum(axis=0)
    out = dict(zip(("precision", "recall", "f1"), _prf(tp, predicted, gold), strict=True))
    out["accuracy"] = counts.tokens_correct / counts.tokens_total if counts.tokens_total else 0.0
    for kind, (t, p, g) in zip(counts.types, counts.counts, strict=True):
        precision, recall, f1 = _prf(t, p, g)
        out.update({f"{kind}_precision": precision, f"{kind}_recall": recall, f"{kind}_f1": f1,
                    f"{kind}_support": float(g)})
    return out


def _prf(tp: int, predicted: int, gold: int) -> tuple[float, float, float]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def tags_of_labeled_tokens(predictions: np.ndarray, labels: np.ndarray, names: Sequence[str]
                           ) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tag sequences of a batch, keeping the positions whose label is not IGNORE_INDEX (each word's
    first token), as run_ner.py's compute_metrics. predictions, labels: [batch, length] label ids."""
    gold, predicted = [], []
    for p_row, l_row in zip(np.asarray(predictions), np.asarray(labels), strict=True):
        keep = l_row != IGNORE_INDEX
        gold.append([names[i] for i in l_row[keep]])
        predicted.append([names[i] for i in p_row[keep]])
    return gold, predicted


# ---- transformers' token-classification pipeline post-processing --------------------------------------------------

AGGREGATION_STRATEGIES = ("none", "simple", "first", "max", "average")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Per-token label probabilities, as the pipeline computes them (float32 logits, max-shifted)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def subword_flags(sentence: str, tokens: Sequence[str], offsets: Sequence[tuple[int, int] | None],
                  continuing_subword_prefix: str | None) -> list[bool]:
    """Whether each token continues the previous one's word, as the pipeline decides it: with a subword prefix
    (WordPiece's "##"), when the token's string is not as long as its text; otherwise when no space borders its
    start (a heuristic that punctuation fools; pass word ids to `aggregate_entities` instead)."""
    flags = []
    for token, span in zip(tokens, offsets, strict=True):
        if span is None:
            flags.append(False)
            continue
        start, end = span
        if continuing_subword_prefix:
            flags.append(len(token) != len(sentence[start:end]))
        else:
            flags.append(start > 0 and " " not in sentence[start - 1 : start + 1])
    return flags


def aggregate_entities(
    sentence: str,
    offsets: Sequence[tuple[int, int] | None],
    scores: np.ndarray,
    id2label: Mapping[int, str] | Sequence[str],
    aggregation_strategy: str = "none",
    *,
    is_subword: Sequence[bool] | None = None,
    word_ids: Sequence[int | None] | None = None,
    tokens: Sequence[str] | None = None,
    tokens_to_string: Callable[[list[str]], str] | None = None,
    unknown: Sequence[bool] | None = None,
    ignore_labels: Sequence[str] = ("O",),
) -> list[dict]:
    """The entities transformers' TokenClassificationPipeline returns for one text.

    offsets: each token's span in `sentence`, None for special tokens (skipped); scores: [tokens, labels]
    probabilities (`softmax`); is_subword: from `subword_flags`, or word_ids (the word of each token, e.g. from
    token_classification.token_word_ids): a token continues a word when it belongs to the previous token's word.
    A token's or group's "word" is, as in transformers, built from `tokens` (token strings) by `tokens_to_string`
    (the tokenizer's convert_tokens_to_string), with `unknown` tokens standing for their text; without tokens it is
    the text the group spans. Returns dicts with entity, score, index, word, start, end (strategy none) or
    entity_group, score, word, start, end (the others), scores as floats.
    """
    strategy = aggregation_strategy.lower()
    if strategy not in AGGREGATION_STRATEGIES:
        raise ValueError(f"aggregation_strategy must be one of {AGGREGATION_STRATEGIES}, got {aggregation_strategy!r}")
    if is_subword is None:
        if word_ids is None:
            raise ValueError("aggregate_entities needs is_subword (see subword_flags) or word_ids")
        is_subword = [w is not None and i > 0 and word_ids[i - 1] == w for i, w in enumerate(word_ids)]
    if tokens is not None and tokens_to_string is None:
        raise ValueError("tokens need tokens_to_string (the tokenizer's convert_tokens_to_string)")

    def word_of(group: list[dict]) -> str:
        if tokens is None:
            return sentence[group[0]["start"] : group[-1]["end"]]
        return tokens_to_string([p["word"] for p in group])

    scores = np.asarray(scores)
    pre = []
    for index, span in enumerate(offsets):
        if span is None:
            continue
        start, end = int(span[0]), int(span[1])
        word, subword = (tokens[index] if tokens is not None else sentence[start:end]), bool(is_subword[index])
        if unknown is not None and unknown[index]:
            word, subword = sentence[start:end], False
        pre.append({"word": word, "scores": scores[index], "start": start, "end": end, "index": index,
                    "is_subword": subword})

    def label(i) -> str:
        return id2label[int(i)]

    if strategy in ("none", "simple"):
        entities = [{"entity": label(p["scores"].argmax()), "score": p["scores"][p["scores"].argmax()],
                     "index": p["index"], "word": p["word"], "start": p["start"], "end": p["end"]} for p in pre]
    else:
        entities = [_aggregate_word(group, strategy, label, word_of) for group in _word_groups(pre)]
    if strategy != "none":
        entities = _group_entities(entities, word_of)
    kept = [e for e in entities if e.get("entity", e.get("entity_group")) not in ignore_labels]
    return [{k: (float(v) if k == "score" else v) for k, v in e.items()} for e in kept]


def _word_groups(pre: list[dict]) -> list[list[dict]]:
    groups: list[list[dict]] = []
    for p in pre:
        if groups and p["is_subword"]:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def _aggregate_word(group: list[dict], strategy: str, label, word_of) -> dict:
    if strategy == "first":
        scores = group[0]["scores"]
    elif strategy == "max":
        scores = max(group, key=lambda p: p["scores"].max())["scores"]
    else:  # average
        scores = np.nanmean(np.stack([p["scores"] for p in group]), axis=0)
    best = scores.argmax()
    return {"entity": label(best), "score": scores[best], "word": word_of(group), "start": group[0]["start"],
            "end": group[-1]["end"]}


def merge_overlapping_entities(entities: Sequence[dict]) -> list[dict]:
    """Entities of a long text read in overlapping chunks (transformers' pipeline `stride`; chunks as
    question_answering.context_windows cuts them), each chunk's from `aggregate_entities`: by start, and of two that
    overlap the longer stays, at equal length the higher score (transformers' aggregate_overlapping_entities)."""
    merged: list[dict] = []
    for entity in sorted(entities, key=lambda e: e["start"]):
        if merged and merged[-1]["start"] <= entity["start"] < merged[-1]["end"]:
            previous = merged[-1]
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                merged[-1] = entity
        else:
            merged.append(entity)
    return merged


def _bio(entity: str) -> tuple[str, str]:
    if entity.startswith(("B-", "I-")):
        return entity[0], entity[2:]
    return "I", entity  # not B-/I-: a continuation


def _group_entities(entities: list[dict], word_of) -> list[dict]:
    """Adjacent entities of one type merge unless the later one is B-."""
    groups: list[list[dict]] = []
    for e in entities:
        bi, kind = _bio(e["entity"])
        if groups and kind == _bio(groups[-1][-1]["entity"])[1] and bi != "B":
            groups[-1].append(e)
        else:
            groups.append([e])
    return [{"entity_group": g[0]["entity"].split("-", 1)[-1], "score": np.mean(np.nanmean([e["score"] for e in g])),
             "word": word_of(g), "start": g[0]["start"], "end": g[-1]["end"]}
            for g in groups]
