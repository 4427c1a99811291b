"""Training runs through the real code path (Hydra config -> run_training -> Lightning), a few dozen steps each."""

import json
import math

import pytest
import torch

from gptframe.config import to_typed
from gptframe.training.run import run_training
from tests.conftest import TINY_RUN, compose


def _train(run_dir, cache_dir, *overrides):
    cfg = compose([*TINY_RUN, f"data.cache_dir={cache_dir}", *overrides])
    return run_training(to_typed(cfg), run_dir, cfg)


def test_short_run_lowers_loss_and_writes_the_run_dir(tmp_path, cache_dir):
    summary = _train(tmp_path, cache_dir, "trainer.max_steps=60", "trainer.checkpoint_every_n_steps=30")
    assert summary["step"] == 60
    assert summary["val_loss"] < math.log(65) - 0.8  # well below a uniform guess over 65 characters
    assert summary["val_perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
    required = {"step", "train_loss", "val_loss", "val_perplexity", "tokens_per_s", "wall_s", "params", "checkpoint"}
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert required <= on_disk.keys() and on_disk["tokens_per_s"] > 0 and on_disk["params"] > 0
    ckpts = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert {"last.ckpt", "step000030.ckpt", "step000060.ckpt"} <= ckpts
    assert any(name.startswith("best-step") for name in ckpts)
    assert (tmp_path / "loss_curve.png").stat().st_size > 10_000
    assert (tmp_path / "tokenizer" / "gptframe_tokenizer.json").is_file()
    assert "n_layer: 2" in (tmp_path / "config.yaml").read_text()
    metrics = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    assert {"train/loss", "val/loss", "val/perplexity", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(header)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)  # safe-loadable
    assert "tokenizer_files" in ckpt["gptframe"] and ckpt["global_step"] == 60


def test_train_loss_decreases_over_a_run(tmp_path, cache_dir):
    _train(tmp_path, cache_dir, "trainer.max_steps=60")
    lines = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("train/loss")
    losses = [float(r.split(",")[col]) for r in lines[1:] if r.split(",")[col]]
    assert losses[-1] < losses[0] - 0.5


def test_stop_and_resume_matches_an_uninterrupted_run(tmp_path, cache_dir):
    # dropout > 0: the resumed run must also restore the RNG to draw the same masks
    common = ["model.dropout=0.1", "task.lr_decay_steps=120", "trainer.val_check_interval=30"]
    full = _train(tmp_path / "full", cache_dir, *common, "trainer.max_steps=120")
    first = _train(tmp_path / "split", cache_dir, *common, "trainer.max_steps=60")
    assert first["step"] == 60
    resumed = _train(tmp_path / "split", cache_dir, *common, "trainer.max_steps=120", "resume=auto")
    assert resumed["step"] == 120
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-6)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], abs=1e-6)
    # resuming a finished run trains no further, and still writes the summary
    (tmp_path / "split" / "summary.json").unlink()
    again = _train(tmp_path / "split", cache_dir, *common, "trainer.max_steps=120")
    assert again["step"] == 120 and again["val_loss"] == pytest.approx(full["val_loss"], abs=1e-6)
    assert (tmp_path / "split" / "summary.json").is_file()


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_path, cache_dir):
    summary = _train(tmp_path, cache_dir, "resume=auto", "trainer.max_steps=5")
    assert summary["step"] == 5


def test_resume_from_explicit_path_into_a_new_run_dir(tmp_path, cache_dir):
    _train(tmp_path / "a", cache_dir, "trainer.max_steps=20")
    summary = _train(tmp_path / "b", cache_dir, "trainer.max_steps=30", f"resume={tmp_path / 'a/checkpoints/last.ckpt'}")
    assert summary["step"] == 30


def test_gradient_accumulation_counts_optimizer_steps(tmp_path, cache_dir):
    summary = _train(tmp_path, cache_dir, "trainer.max_steps=10", "trainer.accumulate_grad_batches=3",
                     "trainer.val_check_interval=5")
    assert summary["step"] == 10
    assert summary["tokens_seen"] == 10 * 3 * 8 * 32


def test_sentencepiece_run_with_bf16_mixed(tmp_path, cache_dir):
    summary = _train(tmp_path, cache_dir, "tokenizer=sentencepiece", "tokenizer.vocab_size=512",
                     "trainer.max_steps=20", "trainer.precision=bf16-mixed", "model.pad_vocab_size_multiple=64")
    assert summary["tokenizer"]["kind"] == "sentencepiece" and summary["precision"] == "bf16-mixed"
    assert math.isfinite(summary["val_loss"])


def test_compiled_model_trains_and_checkpoints_plain_names(tmp_path, cache_dir):
    summary = _train(tmp_path, cache_dir, "trainer.compile=true", "trainer.max_steps=10", "trainer.val_check_interval=5")
    assert summary["step"] == 10 and math.isfinite(summary["val_loss"])
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "model.transformer.wte.weight" in state and not any("_orig_mod" in k for k in state)
