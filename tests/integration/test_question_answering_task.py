"""task=question_answering through the real code path (Hydra config -> run_training -> Lightning) on tiny BERTs:
init_from a gptframe MLM checkpoint or a Hugging Face directory, exact resume, SQuAD v2 metrics, export, and bad input
rejected by gptframe-train with one clear line."""

from __future__ import annotations

import csv
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
import transformers

import gptframe
from data_pipelines.question_answering import QAFeatureDataset, build_qa_features, read_qa
from data_pipelines.question_answering_eval import QAEvaluation
from gptframe.config import to_typed
from gptframe.interop.hf import export_model
from gptframe.loading import load_model
from gptframe.training.run import run_training
from tests.conftest import TINY_BERT, compose, run_cli
from tests.integration.test_cli import _assert_rejected

QA = ["task=question_answering", "task.max_seq_len=48", "task.doc_stride=16", "task.lr=3e-3", "task.warmup_steps=5",
      "data.batch_size=16", "trainer.enable_progress_bar=false"]


def qa_records(text: str, n: int, seed: int, impossible_every: int = 0) -> list[dict]:
    """A learnable QA set over Shakespeare passages: "which word comes first?" / "... last?", answered by the first or
    last word of the context (contexts of one to several windows); every impossible_every-th question unanswerable."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        start = rng.randrange(0, len(text) - 400)
        context = text[start : start + rng.choice([60, 120, 250])]
        words = [m.span() for m in re.finditer(r"[A-Za-z]+", context)]
        which = rng.choice(["first", "last"])
        a, b = words[0] if which == "first" else words[-1]
        answers = {"text": [context[a:b]], "answer_start": [a]}
        if impossible_every and i % impossible_every == 0:
            answers = {"text": [], "answer_start": []}
        records.append({"id": f"{seed}-{i}", "question": f"which word comes {which}?", "context": context,
                        "answers": answers})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory, shakespeare_text) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("qa")
    return (write_jsonl(out / "train.jsonl", qa_records(shakespeare_text, 300, seed=0)),
            write_jsonl(out / "val.jsonl", qa_records(shakespeare_text, 40, seed=1)))


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory, cache_dir, shakespeare_text) -> Path:
    corpus = tmp_path_factory.mktemp("corpus") / "small.txt"
    corpus.write_text(shakespeare_text[:60_000], encoding="utf-8")
    run_dir = tmp_path_factory.mktemp("mlm")
    _train(run_dir, cache_dir, *TINY_BERT, f"data.path={corpus}", "trainer.max_steps=20",
           "trainer.val_check_interval=20")
    return run_dir / "checkpoints" / "last.ckpt"


def _train(run_dir, cache_dir, *overrides):
    cfg = compose([f"data.cache_dir={cache_dir}", *overrides])
    return run_training(to_typed(cfg), run_dir, cfg)


def test_fine_tunes_from_an_mlm_checkpoint_and_exports(mlm_checkpoint, qa_files, tmp_path, cache_dir):
    train, val = qa_files
    summary = _train(tmp_path / "run", cache_dir, *QA, f"model.init_from={mlm_checkpoint}",
                     f"data.train_path={train}", f"data.val_path={val}", "trainer.max_epochs=4")
    loaded = load_model(summary["checkpoint"])
    windows = len(build_qa_features(read_qa(train).examples, loaded.tokenizer, 48, 16))
    assert summary["task"] == "question_answering" and summary["arch"] == "bert"
    assert summary["step"] == 4 * math.ceil(windows / 16)  # epochs over the training windows
    assert summary["version_2_with_negative"] is False and summary["init_from"] == str(mlm_checkpoint)
    # percent, as the official script (whose F1 can fall below EM: a gold "A" or "The" normalises to nothing)
    assert 0.0 <= summary["val_exact_match"] <= 100.0 and 0.0 <= summary["val_f1"] <= 100.0
    assert summary["best_val_f1"] >= summary["val_f1"] - 1e-6 and "best-step" in summary["best_checkpoint"]
    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    f1_by_epoch = [float(r["val/f1"]) for r in rows if r.get("val/f1")]
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(f1_by_epoch) == 4 and losses[-1] < 0.6 * losses[0]  # each epoch (the last one is the final evaluation)
    assert max(f1_by_epoch) > 40.0  # first/last word: learned well beyond a random span (F1 of a few points)
    assert loaded.task == "question_answering" and loaded.tokenizer.identity() == summary["tokenizer"]
    # the summary's scores are those of the final weights over the whole val set, scored here outside the trainer
    examples = read_qa(val).examples
    features = build_qa_features(examples, loaded.tokenizer, 48, 16)
    batch = QAFeatureDataset(features, loaded.tokenizer.pad_id)[list(range(len(features)))]
    evaluation = QAEvaluation(examples, features, version_2_with_negative=False)
    with torch.no_grad():
        start, end = loaded.model(**{k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
    evaluation.add_batch(batch["feature_index"].numpy(), start.numpy(), end.numpy())
    scores = QAEvaluation.metrics_from_sums(evaluation.sums(), version_2=False)
    assert summary["val_f1"] == pytest.approx(scores["f1"], abs=1e-3)
    assert summary["val_exact_match"] == pytest.approx(scores["exact_match"], abs=1e-3)

    out = export_model(loaded, tmp_path / "export")
    theirs = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    ids = torch.tensor([loaded.tokenizer.encode_pair("which word comes first?", "Romeo, Romeo, wherefore")[0]])
    with torch.no_grad():
        start, end = loaded.model(input_ids=ids)
        expected = theirs(input_ids=ids)
    assert (start - expected.start_logits).abs().max() <= 1e-4 and (end - expected.end_logits).abs().max() <= 1e-4
    answer = gptframe.pipeline("question-answering", model=out)(question="which word comes first?",
                                                                context="Romeo, Romeo, wherefore art thou")
    assert set(answer) == {"answer", "score", "start", "end"}


def test_resume_equals_the_uninterrupted_run(qa_files, tmp_path, cache_dir):
    train, val = qa_files
    common = [*TINY_BERT, *QA, f"data.train_path={train}", f"data.val_path={val}", "trainer.max_epochs=null",
              "trainer.val_check_interval=10", "task.lr_decay_steps=20", "model.hidden_dropout_prob=0.1"]
    straight = _train(tmp_path / "straight", cache_dir, *common, "trainer.max_steps=20")
    _train(tmp_path / "resumed", cache_dir, *common, "trainer.max_steps=10")
    resumed = _train(tmp_path / "resumed", cache_dir, *common, "trainer.max_steps=20")
    assert resumed["step"] == straight["step"] == 20
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-6)
    assert resumed["val_f1"] == pytest.approx(straight["val_f1"], abs=1e-6)
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], abs=1e-6)


def test_squad_v2_from_a_hugging_face_directory(qa_files, tmp_path, cache_dir, shakespeare_text):
    """Nested SQuAD v2.0 JSON with unanswerable questions, starting from a transformers BertForMaskedLM directory:
    HasAns / NoAns metrics, v2 detected from the data."""
    from tests.unit.test_question_answering import to_squad

    vocab = tmp_path / "vocab.txt"
    words = sorted(set(re.findall(r"[a-z]+", shakespeare_text[:60_000].lower())))[:300]
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz",
                                *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"), ",", ".", "?", "!", ":", ";", "'"]))
    hf_dir = tmp_path / "hf"
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertForMaskedLM(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    for split, seed, n in (("train", 0, 120), ("val", 1, 30)):
        records = qa_records(shakespeare_text, n, seed=seed, impossible_every=3)
        (tmp_path / f"{split}.json").write_text(json.dumps(to_squad(records, "v2.0")), encoding="utf-8")
    summary = _train(tmp_path / "run", cache_dir, *QA, f"model.init_from={hf_dir}", "trainer.max_epochs=1",
                     f"data.train_path={tmp_path}/train.json", f"data.val_path={tmp_path}/val.json")
    assert summary["version_2_with_negative"] is True and summary["init_from"] == str(hf_dir)
    assert summary["val_HasAns_total"] == 20 and summary["val_NoAns_total"] == 10
    overall = (20 * summary["val_HasAns_f1"] + 10 * summary["val_NoAns_f1"]) / 30
    assert summary["val_f1"] == pytest.approx(overall, abs=1e-3)
    assert {"val_exact_match", "val_HasAns_exact", "val_NoAns_exact"} <= set(summary)


@pytest.mark.slow  # three gptframe-train processes: 20-50 s on a busy 2-core machine
def test_bad_question_answering_input_exits_with_one_clear_error(mlm_checkpoint, qa_files, tmp_path, cache_dir):
    train, val = qa_files
    records = [json.loads(line) for line in val.read_text().splitlines()]
    moved = [dict(r) for r in records]
    moved[3] = {**moved[3], "answers": {"text": moved[3]["answers"]["text"],
                                        "answer_start": [moved[3]["answers"]["answer_start"][0] + 1]}}
    bad_start = write_jsonl(tmp_path / "bad_start.jsonl", moved)
    cases = {
        "answer_start": ([f"data.train_path={train}", f"data.val_path={bad_start}"],
                         [f"{bad_start}:4 (id '1-3'): answer_start", "not at the answer"]),
        "stride": ([f"data.train_path={train}", f"data.val_path={val}", "task.doc_stride=48"],
                   [f"{train}:", "doc_stride=48", "windows cannot advance"]),
        "missing_paths": ([], ["task=question_answering needs data.train_path and data.val_path"]),
    }
    for name, (overrides, fragments) in cases.items():
        run_dir = tmp_path / f"run-{name}"
        res = run_cli("gptframe-train", *QA, f"model.init_from={mlm_checkpoint}", f"data.cache_dir={cache_dir}",
                      f"hydra.run.dir={run_dir}", *overrides)
        assert res.returncode == 2, res.stderr[-2000:]
        _assert_rejected(res, *fragments, run_dir=run_dir)
        errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1, res.stderr[-2000:]
