"""Extractive QA evaluation, framework-free (numpy only), shared by the training task and `pipeline()`:

- `predict_answer`: the answer run_qa.py's `postprocess_qa_predictions` picks for one question from the start/end
  logits of all its windows: the n_best_size best starts x ends of each window over valid context spans no longer
  than max_answer_length, ranked by start + end logit across windows; with unanswerable questions (SQuAD v2) the null
  answer (the lowest [CLS] score over windows) wins when it beats the best span by more than null_score_diff_threshold.
- `squad_scores` / `squad_metrics`: exact match and F1 as the official SQuAD v1.1 and v2.0 evaluation scripts compute
  them (lower case, no punctuation, no articles, whitespace collapsed; the max over gold answers), with v2's HasAns /
  NoAns breakdown. Per-question scores sum, so ranks can score their own questions and add up.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_pipelines.question_answering import CLS_INDEX, QAExample, QAFeatures


@dataclass
class AnswerCandidate:
    text: str
    start: int  # character span in the context; (0, 0) for the null answer
    end: int
    start_logit: float
    end_logit: float
    probability: float = 0.0  # softmax of start + end logit over the n-best list
    is_null: bool = False

    @property
    def score(self) -> float:
        return self.start_logit + self.end_logit


@dataclass
class AnswerPrediction:
    answer: AnswerCandidate  # the chosen answer (the null answer: text "")
    n_best: list[AnswerCandidate]  # best first, with probabilities
    null_score_diff: float | None  # null score minus the best span's (v2 only): above the threshold -> no answer


@dataclass
class Window:
    """One feature's logits (any length >= its tokens: padding is never chosen) and its context spans."""

    start_logits: np.ndarray
    end_logits: np.ndarray
    offsets: Sequence[tuple[int, int] | None]


def predict_answer(
    context: str,
    windows: Sequence[Window],
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> AnswerPrediction:
    null: AnswerCandidate | None = None
    candidates: list[AnswerCandidate] = []
    for w in windows:
        start_logits, end_logits = np.asarray(w.start_logits), np.asarray(w.end_logits)
        window_null = AnswerCandidate("", 0, 0, start_logits[CLS_INDEX], end_logits[CLS_INDEX], is_null=True)
        if null is None or null.score > window_null.score:
            null = window_null  # every window must agree there is no answer: the least confident one counts
        candidates += _window_spans(context, w, start_logits, end_logits, n_best_size, max_answer_length)
    if null is None:
        raise ValueError("predict_answer needs at least one window")
    if version_2_with_negative:
        candidates.append(null)
    n_best = sorted(candidates, key=lambda c: c.score, reverse=True)[:n_best_size]
    if version_2_with_negative and not any(c.is_null for c in n_best):
        n_best.append(null)
    if not n_best or (len(n_best) == 1 and n_best[0].text == ""):
        n_best.insert(0, AnswerCandidate("empty", 0, 0, 0.0, 0.0))  # as run_qa: never leave no non-null answer
    scores = np.array([c.score for c in n_best], dtype=np.float64)
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    for c, p in zip(n_best, probabilities, strict=True):
        c.probability = float(p)
    if not version_2_with_negative:
        return AnswerPrediction(n_best[0], n_best, None)
    best = next(c for c in n_best if c.text != "")
    diff = float(null.score - best.score)
    return AnswerPrediction(null if diff > null_score_diff_threshold else best, n_best, diff)


def _window_spans(context: str, w: Window, start_logits: np.ndarray, end_logits: np.ndarray, n_best_size: int,
                  max_answer_length: int) -> list[AnswerCandidate]:
    offsets = w.offsets
    starts = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()
    ends = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
    spans = []
    for s in starts:
        for e in ends:
            if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                continue  # not a context token
            if e < s or e - s + 1 > max_answer_length:
                continue
            start, end = offsets[s][0], offsets[e][1]
            spans.append(AnswerCandidate(context[start:end], start, end, start_logits[s], end_logits[e]))
    return spans


def postprocess_qa_predictions(
    examples: Sequence[QAExample],
    features: QAFeatures,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, AnswerPrediction]:
    """id -> prediction for every example that has features here; logits indexed like `features` (rows of a padded
    array or one array per feature)."""
    predictions = {}
    for example, group in zip(examples, features.features_of(len(examples)), strict=True):
        if not group:
            continue
        windows = [Window(start_logits[i], end_logits[i], features.offsets[i]) for i in group]
        predictions[example.id] = predict_answer(
            example.context, windows, version_2_with_negative, n_best_size, max_answer_length,
            null_score_diff_threshold,
        )
    return predictions


# ---- SQuAD metrics, as the official evaluation scripts compute them ------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (both official scripts)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: str, gold: str, version_2: bool) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version_2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)  # v2: no answer is right exactly when both are empty
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, gold_answers: Sequence[str], version_2: bool) -> tuple[float, float]:
    """(exact match, F1) of one prediction, each in [0, 1], the max over the gold answers. v2: gold answers that
    normalise to nothing are dropped, and a question with none is right only when the prediction is empty too."""
    if version_2:
        gold_answers = [a for a in gold_answers if normalize_answer(a)] or [""]
    if not gold_answers:
        raise ValueError("SQuAD v1.1 scoring needs at least one gold answer per question")
    exact = max(float(normalize_answer(prediction) == normalize_answer(g)) for g in gold_answers)
    f1 = max(_f1(prediction, g, version_2) for g in gold_answers)
    return exact, f1


def squad_metrics(predictions: dict[str, str], examples: Sequence[QAExample], version_2: bool) -> dict[str, float]:
    """v1.1: exact_match and f1 (percent). v2.0: exact, f1, total and the HasAns_ / NoAns_ breakdown, the keys of the
    official script. Every example needs a prediction (the text; "" for no answer)."""
    missing = [ex.id for ex in examples if ex.id not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} questions, e.g. {missing[:3]}")
    scores = {ex.id: squad_scores(predictions[ex.id], ex.answer_texts, version_2) for ex in examples}
    if not version_2:
        exact, f1, _ = _percent(scores.values())
        return {"exact_match": exact, "f1": f1}
    exact, f1, total = _percent(scores.values())
    out = {"exact": exact, "f1": f1, "total": total}
    for name, has_answer in (("HasAns", True), ("NoAns", False)):
        subset = [scores[ex.id] for ex in examples if (not ex.is_impossible) == has_answer]
        if subset:
            exact, f1, total = _percent(subset)
            out.update({f"{name}_exact": exact, f"{name}_f1": f1, f"{name}_total": total})
    return out


def _percent(scores) -> tuple[float, float, int]:
    scores = list(scores)
    return (100.0 * sum(e for e, _ in scores) / len(scores), 100.0 * sum(f for _, f in scores) / len(scores),
            len(scores))
