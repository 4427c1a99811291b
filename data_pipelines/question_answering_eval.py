"""Extractive QA evaluation, framework-free (numpy only), shared by the training task and `pipeline()`:

- `predict_answer`: the answer run_qa.py's `postprocess_qa_predictions` picks for one question from the start/end
  logits of all its windows: the n_best_size best starts x ends of each window over valid context spans no longer
  than max_answer_length, ranked by start + end logit across windows; with unanswerable questions (SQuAD v2) the null
  answer (the lowest [CLS] score over windows) wins when it beats the best span by more than null_score_diff_threshold.
- `squad_scores` / `squad_metrics`: exact match and F1 as the official SQuAD v1.1 and v2.0 evaluation scripts compute
  them (lower case, no punctuation, no articles, whitespace collapsed; the max over gold answers), with v2's HasAns /
  NoAns breakdown. Per-question scores sum, so ranks can score their own questions and add up (`QAEvaluation`).
- `pipeline_answers`: the top_k answers {score, start, end, answer} transformers 4's question-answering pipeline gave
  (probability products, handle_impossible_answer), for `pipeline("question-answering")`.
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


def pipeline_answers(
    context: str,
    windows: Sequence[Window],
    top_k: int = 1,
    handle_impossible_answer: bool = False,
    max_answer_len: int = 15,
) -> list[dict]:
    """The answers transformers 4's question-answering pipeline returned (transformers 5 dropped that pipeline), top_k
    of {score, start, end, answer}, best first. In each window the start and end logits are softmaxed separately over
    the context tokens and [CLS] (others masked to -10000, as transformers' select_starts_ends); a span scores
    p(start) * p(end), at most max_answer_len tokens long; with handle_impossible_answer the null answer ("", 0, 0)
    scores the lowest p(start=[CLS]) * p(end=[CLS]) over windows. Spans map to text through the window's character
    offsets (the pipeline's align_to_words=False)."""
    answers, null_score = [], 1_000_000.0
    for w in windows:
        start_p, end_p, allowed = _masked_softmax(w)
        if handle_impossible_answer:
            null_score = min(null_score, float(start_p[CLS_INDEX] * end_p[CLS_INDEX]))
        start_p[CLS_INDEX] = end_p[CLS_INDEX] = 0.0
        for s, e, score in zip(*_top_spans(start_p, end_p, allowed, top_k, max_answer_len), strict=True):
            begin, end = (w.offsets[s] or (0, 0))[0], (w.offsets[e] or (0, 0))[1]  # [CLS]: (0, 0), as transformers
            answers.append({"score": float(score), "start": begin, "end": end, "answer": context[begin:end]})
    if handle_impossible_answer:
        answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


def _masked_softmax(w: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(w.offsets)
    allowed = np.array([o is not None for o in w.offsets])
    allowed[CLS_INDEX] = True  # [CLS] stays in: it scores the null answer
    probabilities = []
    for logits in (w.start_logits, w.end_logits):
        logits = np.where(allowed, np.asarray(logits)[:n], -10000.0)
        exp = np.exp(logits - logits.max())
        probabilities.append(exp / exp.sum())
    return probabilities[0], probabilities[1], allowed


def _top_spans(start_p: np.ndarray, end_p: np.ndarray, allowed: np.ndarray, top_k: int, max_answer_len: int):
    """transformers' decode_spans: the top_k of p(start) * p(end) over spans of 1..max_answer_len tokens."""
    candidates = np.tril(np.triu(np.outer(start_p, end_p)), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) <= top_k:
        order = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, top_k)[0:top_k]
        order = best[np.argsort(-flat[best])]
    starts, ends = np.unravel_index(order, candidates.shape)
    keep = allowed[starts] & allowed[ends]
    starts, ends = starts[keep], ends[keep]
    return starts.tolist(), ends.tolist(), candidates[starts, ends].tolist()


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


class QAEvaluation:
    """Validation-time accumulator for one rank: collects the start/end logits of the windows it evaluates (batches
    from QuestionAnsweringDataModule, `feature_index` PAD_KEY rows skipped), then predicts and scores the questions
    whose windows it saw. `sums()` are per-rank totals that add up across ranks (one all-reduce); `metrics_from_sums`
    turns the global totals into squad_metrics' numbers."""

    SUM_NAMES = ("exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
                 "NoAns_total")

    def __init__(self, examples: Sequence[QAExample], features: QAFeatures, version_2_with_negative: bool,
                 n_best_size: int = 20, max_answer_length: int = 30, null_score_diff_threshold: float = 0.0):
        self.examples = examples
        self.features = features
        self.version_2 = version_2_with_negative
        self.settings = (version_2_with_negative, n_best_size, max_answer_length, null_score_diff_threshold)
        self.groups = features.features_of(len(examples))
        self.logits: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def reset(self) -> None:
        self.logits.clear()

    def add_batch(self, feature_index, start_logits, end_logits) -> None:
        """feature_index: [batch]; start_logits, end_logits: [batch, length] (numpy, or CPU tensors as numpy)."""
        for row, k in enumerate(np.asarray(feature_index).tolist()):
            if k >= 0:
                n = len(self.features.input_ids[k])
                self.logits[k] = (np.asarray(start_logits[row][:n]), np.asarray(end_logits[row][:n]))

    def predictions(self) -> dict[str, AnswerPrediction]:
        out = {}
        for example, group in zip(self.examples, self.groups, strict=True):
            seen = [k in self.logits for k in group]
            if not any(seen):
                continue
            if not all(seen):
                raise ValueError(f"question {example.id!r}: {sum(seen)} of its {len(group)} windows were evaluated "
                                 "here; a question's windows must all be on one rank (grouped_rank_share)")
            windows = [Window(*self.logits[k], self.features.offsets[k]) for k in group]
            out[example.id] = predict_answer(example.context, windows, *self.settings)
        return out

    def sums(self) -> np.ndarray:
        """float64 [9]: exact, F1 and question count, overall, HasAns and NoAns (SUM_NAMES)."""
        totals = np.zeros(len(self.SUM_NAMES))
        predictions = self.predictions()
        for example in self.examples:
            if example.id in predictions:
                exact, f1 = squad_scores(predictions[example.id].answer.text, example.answer_texts, self.version_2)
                part = 6 if example.is_impossible else 3
                totals[[0, 1, 2, part, part + 1, part + 2]] += (exact, f1, 1, exact, f1, 1)
        return totals

    @classmethod
    def metrics_from_sums(cls, sums, version_2: bool) -> dict[str, float]:
        """squad_metrics' keys and values (percent) from summed `sums()`."""
        sums = np.asarray(sums, dtype=np.float64)
        if not version_2:
            return {"exact_match": 100.0 * sums[0] / sums[2], "f1": 100.0 * sums[1] / sums[2]}
        out = {}
        for prefix, at in (("", 0), ("HasAns_", 3), ("NoAns_", 6)):
            if sums[at + 2]:
                out.update({f"{prefix}exact": 100.0 * sums[at] / sums[at + 2],
                            f"{prefix}f1": 100.0 * sums[at + 1] / sums[at + 2], f"{prefix}total": int(sums[at + 2])})
        return out
