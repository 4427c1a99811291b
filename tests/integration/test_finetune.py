"""BERT masked-LM pretraining and classification fine-tuning through the real code path (Hydra config ->
run_training -> Lightning), tiny models, a few dozen steps each."""

import csv
import json
import math

import pytest
import torch

from data_pipelines.mlm import SeqLenWarmup
from gptframe.config import to_typed
from gptframe.loading import load_model
from gptframe.training.run import run_training
from tests.conftest import TINY_BERT, TINY_RUN, compose


def _train(run_dir, cache_dir, *overrides):
    cfg = compose([f"data.cache_dir={cache_dir}", *overrides])
    return run_training(to_typed(cfg), run_dir, cfg)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, cache_dir, small_corpus_module):
    run_dir = tmp_path_factory.mktemp("bert")
    summary = _train(run_dir, cache_dir, *TINY_BERT, f"data.path={small_corpus_module}")
    return run_dir, summary


@pytest.fixture(scope="module")
def small_corpus_module(tmp_path_factory, shakespeare_text):
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(shakespeare_text[:120_000], encoding="utf-8")
    return path


def test_mlm_pretraining_learns_and_logs_bert_metrics(bert_run):
    run_dir, summary = bert_run
    assert summary["task"] == "mlm" and summary["arch"] == "bert" and summary["step"] == 100
    assert summary["val_mlm_loss"] < math.log(400) - 0.4  # below a uniform guess: it learned the masked tokens
    assert 0.0 < summary["val_mlm_accuracy"] < 1.0
    assert summary["val_perplexity"] == pytest.approx(math.exp(summary["val_mlm_loss"]))
    assert 0.0 < summary["val_mlm_accuracy"] < 1.0 and 0.0 <= summary["val_nsp_accuracy"] <= 1.0
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as f:
        header = next(csv.reader(f))
    wanted = {"train/loss", "train/mlm_loss", "train/mlm_accuracy", "train/nsp_loss", "train/nsp_accuracy",
              "val/loss", "val/mlm_loss", "val/mlm_accuracy", "val/nsp_accuracy", "val/perplexity", "train/grad_norm"}
    assert wanted <= set(header)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["gptframe"]["task"] == "mlm" and ckpt["gptframe"]["model_config"]["arch"] == "bert"


def test_mlm_labels_line_up_with_inputs(tmp_path, cache_dir, small_corpus_module):
    """With every selected token left unchanged, predicting it is copying: only right if labels and inputs align."""
    summary = _train(tmp_path, cache_dir, *TINY_BERT, f"data.path={small_corpus_module}", "task.mask_token_prob=0",
                     "task.random_token_prob=0", "task.nsp=false")
    assert summary["val_mlm_accuracy"] > 0.9 and "val_nsp_accuracy" not in summary


def test_mlm_seq_len_warmup_grows_examples_by_optimizer_step(tmp_path, cache_dir, small_corpus_module):
    """With accumulation 2, two micro-batches make a step: lengths must follow optimizer steps, not micro-batches."""
    summary = _train(tmp_path, cache_dir, *TINY_BERT, f"data.path={small_corpus_module}", "task.nsp=false",
                     "task.seq_len_warmup_steps=12", "task.seq_len_warmup_start=16", "trainer.max_steps=16",
                     "trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=1", "trainer.val_check_interval=8")
    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as f:
        by_step = {int(row["step"]): float(row["train/seq_len"]) for row in csv.DictReader(f) if row["train/seq_len"]}
    lengths = [by_step[step] for step in sorted(by_step)]
    warmup = SeqLenWarmup(start=16, end=64, steps=12)  # TINY_BERT: 64 positions, the full example length
    assert lengths == [warmup.length(step) for step in range(16)]
    assert lengths[0] == 16 and lengths[-1] == 64
    assert summary["step"] == 16 and summary["val_mlm_accuracy"] > 0.0  # validation at full length works


def test_mlm_resume_sees_the_same_batches(tmp_path, cache_dir, small_corpus_module):
    common = [*TINY_BERT, f"data.path={small_corpus_module}", "trainer.max_steps=20", "trainer.val_check_interval=10",
              "task.lr_decay_steps=20", "model.hidden_dropout_prob=0.1"]
    straight = _train(tmp_path / "straight", cache_dir, *common)
    _train(tmp_path / "resumed", cache_dir, *common, "trainer.max_steps=10")
    resumed = _train(tmp_path / "resumed", cache_dir, *common)
    assert resumed["step"] == 20
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-5)


def test_bert_classifier_fine_tunes_from_the_mlm_checkpoint(bert_run, tmp_path, cache_dir, speaker_task):
    run_dir, _ = bert_run
    summary = _train(
        tmp_path, cache_dir, "task=classification", f"model.init_from={run_dir}/checkpoints/last.ckpt",
        f"data.train_path={speaker_task}/train.jsonl", f"data.val_path={speaker_task}/val.jsonl",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "task.max_seq_len=48", "data.batch_size=32",
    )
    stats = json.loads((speaker_task / "stats.json").read_text())
    assert summary["task"] == "classification" and summary["arch"] == "bert"
    assert summary["step"] == 2 * math.ceil(stats["num_train"] / 32)  # epochs of the training set
    assert 0.0 <= summary["val_f1"] <= summary["val_accuracy"] + 1e-6 or summary["val_f1"] <= 1.0
    assert summary["labels"] == sorted(stats["speakers"])
    assert summary["best_val_accuracy"] >= summary["val_accuracy"] - 1e-6
    assert "best-step" in summary["best_checkpoint"]
    loaded = load_model(summary["checkpoint"])
    assert loaded.task == "classification" and loaded.labels == summary["labels"]
    pretrained = load_model(run_dir / "checkpoints" / "last.ckpt")
    # the encoder started from the pretrained one: fine-tuning moved it, but not far
    w0 = pretrained.model.bert.embeddings.word_embeddings.weight
    w1 = loaded.model.bert.embeddings.word_embeddings.weight
    assert (w1 - w0).norm() < 0.5 * w0.norm()


def test_gpt_classifier_learns_an_easy_task(tmp_path, cache_dir, small_corpus):
    """A separable task (does the text end in "?") checks the whole classification path learns, from a GPT checkpoint."""
    pretrain = _train(tmp_path / "gpt", cache_dir, *TINY_RUN, f"data.path={small_corpus}", "tokenizer=char")
    lines = [line for line in small_corpus.read_text().splitlines() if len(line) > 20][:400]
    for split, chunk in (("train", lines[:300]), ("val", lines[300:])):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i, line in enumerate(chunk):
                text = line[:28].rstrip(" ,.;:!?")
                writer.writerow([text + "?", "question"] if i % 2 else [text + ".", "statement"])
    summary = _train(
        tmp_path / "cls", cache_dir, "task=classification", f"model.init_from={pretrain['checkpoint']}",
        f"data.train_path={tmp_path}/train.csv", f"data.val_path={tmp_path}/val.csv", "trainer.max_epochs=4",
        "trainer.enable_progress_bar=false", "task.lr=2e-3", "task.warmup_steps=10",
    )
    assert summary["arch"] == "gpt" and summary["labels"] == ["question", "statement"]
    assert summary["val_accuracy"] > 0.9 and summary["val_f1"] > 0.9


def test_gpt_continues_as_a_language_model_on_a_task_corpus(tmp_path, cache_dir, small_corpus, shakespeare_text):
    """task=clm with model.init_from: the architecture, tokenizer and all weights come from the checkpoint."""
    source = _train(tmp_path / "source", cache_dir, *TINY_RUN, f"data.path={small_corpus}", "trainer.max_steps=60")
    task_corpus = tmp_path / "task.txt"
    seen = set(small_corpus.read_text())  # the char tokenizer comes from the checkpoint: no new characters
    task_corpus.write_text("".join(c for c in shakespeare_text[60_000:90_000] if c in seen))
    common = [*TINY_RUN, f"data.path={task_corpus}", "trainer.max_steps=1", "task.lr=1e-9", "task.min_lr=0",
              "task.warmup_steps=0"]
    scratch = _train(tmp_path / "scratch", cache_dir, *common)
    tuned = _train(tmp_path / "tuned", cache_dir, *common, f"model.init_from={source['checkpoint']}",
                   "model.n_layer=7")  # ignored: the architecture comes from init_from
    assert tuned["tokenizer"] == source["tokenizer"] and tuned["params"] == source["params"]
    assert tuned["val_loss"] < scratch["val_loss"] - 0.5  # one (no-op) step in, it already models Shakespeare
