"""Checkpoints under faults: retention, non-finite steps, a full disk, a writer killed mid-write, resume=auto's choice."""

from __future__ import annotations

import io
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptframe.config import to_typed
from gptframe.errors import CheckpointError
from gptframe.training.checkpoint_io import WRITE_DELAY_ENV, SafeCheckpointIO, write_file_atomically
from gptframe.training.checkpoints import load_checkpoint
from gptframe.training.fault_tolerance import INJECT_ENV, NonFiniteError
from gptframe.training.resume import resolve_resume
from gptframe.training.run import run_training
from tests.conftest import TINY_RUN, compose

RUN = [*TINY_RUN, "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.checkpoint_every_n_steps=5"]


def _train(run_dir: Path, cache_dir: Path, *overrides: str) -> dict:
    cfg = compose([*RUN, *overrides, f"data.cache_dir={cache_dir}"])
    return run_training(to_typed(cfg), run_dir, cfg)


def _finite(ckpt: Path) -> bool:
    state = load_checkpoint(ckpt)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_keep_last_checkpoints_keeps_the_newest_periodic_ones(tmp_path, cache_dir):
    _train(tmp_path, cache_dir, "trainer.keep_last_checkpoints=2")
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best-step000020.ckpt", "last.ckpt", "step000015.ckpt", "step000020.ckpt"]
    assert to_typed(compose(TINY_RUN)).trainer.keep_last_checkpoints == 3  # the default
    # orphans (of a run killed after a save, resumed from an earlier checkpoint) go at the next save / validation
    ckpts = tmp_path / "checkpoints"
    for orphan in ("step000003.ckpt", "best-step000004.ckpt"):
        (ckpts / orphan).write_bytes((ckpts / "step000015.ckpt").read_bytes())
    _train(tmp_path, cache_dir, "trainer.keep_last_checkpoints=2", "trainer.max_steps=30")
    assert sorted(p.name for p in ckpts.glob("step*")) == ["step000025.ckpt", "step000030.ckpt"]
    assert len(list(ckpts.glob("best-*"))) == 1


def test_last_is_a_hard_link_of_a_best_written_at_the_same_step(tmp_path, cache_dir):
    _train(tmp_path, cache_dir, "trainer.val_check_interval=20")  # one validation, at the last step: best is last
    ckpts = tmp_path / "checkpoints"
    best, last = ckpts / "best-step000020.ckpt", ckpts / "last.ckpt"
    assert os.path.samefile(best, last)  # one write, two names
    saved = load_checkpoint(last)["callbacks"]
    assert [v["last_model_path"] for v in saved.values() if v.get("monitor")] == [str(last)]  # the best callback
    # resumed, it replaces last.ckpt (a link or a copy, as the new best falls), never adds last-v1.ckpt, and the best
    # file it linked stays whole when last.ckpt gets a new name
    _train(tmp_path, cache_dir, "trainer.val_check_interval=20", "trainer.max_steps=40", "resume=auto")
    names = {p.name for p in ckpts.glob("*.ckpt")}
    assert {"last.ckpt", "step000040.ckpt"} <= names and not any(n.startswith("last-") for n in names)
    assert load_checkpoint(last)["global_step"] == 40
    assert all(_finite(p) for p in ckpts.glob("*.ckpt"))


def test_non_finite_gradient_stops_the_run_naming_the_step(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv(INJECT_ENV, "13")
    with pytest.raises(NonFiniteError, match="step 13: the gradient norm is not finite") as info:
        _train(tmp_path, cache_dir)
    assert len(str(info.value).splitlines()) == 1
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-step000010.ckpt", "last.ckpt", "step000005.ckpt",
                                                       "step000010.ckpt"]
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 10 and _finite(ckpts / "last.ckpt")
    monkeypatch.delenv(INJECT_ENV)
    summary = _train(tmp_path, cache_dir)  # resume=auto continues from the last good state
    assert summary["step"] == 20 and math.isfinite(summary["val_loss"])


def test_skip_policy_skips_up_to_n_updates_then_stops(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv(INJECT_ENV, "3,7")
    skip = ["trainer.nonfinite_policy=skip", "trainer.nonfinite_max_skips=2"]
    summary = _train(tmp_path / "skip", cache_dir, *skip)
    last = load_checkpoint(tmp_path / "skip" / "checkpoints" / "last.ckpt")
    assert summary["step"] == 20 and math.isfinite(summary["val_loss"]) and _finite(tmp_path / "skip/checkpoints/last.ckpt")
    assert last["callbacks"]["NonFiniteGuard"] == {"skipped": [3, 7]}
    # a skipped update is no update at all: AdamW counted 18 steps for every parameter, not 20
    steps = {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert steps == {18}
    monkeypatch.setenv(INJECT_ENV, "3,7,9")
    with pytest.raises(NonFiniteError, match=r"step 9: .*\(2 step\(s\) skipped already, trainer.nonfinite_max_skips=2\)"):
        _train(tmp_path / "stop", cache_dir, *skip)


def _fit_under_fp16_scaler(cache_dir, scaler: torch.amp.GradScaler, steps: int):
    """A tiny clm run under 16-mixed (a GPU's fp16; here its CPU form) with `scaler`, the guard set to stop.
    Returns the trainer and the task."""
    import dataclasses

    import lightning as L
    from lightning.pytorch.plugins import MixedPrecision

    from gptframe.tasks import TASKS
    from gptframe.training.fault_tolerance import NonFiniteGuard
    from gptframe.training.run import build_task_data, resolve_source

    cfg = to_typed(compose([*TINY_RUN, f"data.cache_dir={cache_dir}", "task.warmup_steps=0"]))
    task_cls = TASKS[cfg.task.name]
    data = build_task_data(task_cls, cfg, resolve_source(cfg, None))
    task = task_cls(model_config=dataclasses.asdict(data.model_config), task_config=dataclasses.asdict(cfg.task),
                    max_steps=steps, tokenizer_files=data.tokenizer.to_files(), labels=None, run_config={})
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
                        callbacks=[NonFiniteGuard("stop")], gradient_clip_val=1.0, log_every_n_steps=1, logger=False,
                        enable_checkpointing=False, limit_val_batches=0, enable_progress_bar=False)
    trainer.fit(task, datamodule=data.datamodule)
    return trainer, task


def test_fp16_loss_scaler_overflows_are_skipped_not_faults(cache_dir):
    """A loss scale too high gives inf gradients on purpose; the scaler skips those updates and lowers the scale. The
    guard leaves them to it, the optimizer is not fused (a fused step unscales only inside, leaving clipping with
    scaled gradients), and clipping sees the true norm."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, backoff_factor=2.0**-16)  # overflows at first
    trainer, task = _fit_under_fp16_scaler(cache_dir, scaler, steps=6)  # before: NonFiniteError at step 1
    assert trainer.global_step == 6 and scaler.get_scale() < 2.0**40  # the scaler met overflows and lowered its scale
    assert not trainer.optimizers[0].defaults["fused"]
    assert 0 < float(trainer.callback_metrics["train/grad_norm"]) < 1e3  # unscaled: a scaled norm is ~2**8 or more
    assert all(torch.isfinite(p).all() for p in task.parameters())


def test_fp16_gradients_non_finite_at_any_scale_stop_the_run(cache_dir, monkeypatch):
    """A real fault under the scaler (NaN gradients every step) would have it skip every update while its scale falls
    towards 0: once the scale is below 1 the run stops, naming the step."""
    monkeypatch.setenv(INJECT_ENV, "1,2,3,4,5,6")
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)  # halves at each skipped step: 4, 2, 1, then 0.5
    with pytest.raises(NonFiniteError, match=r"step 4: the fp16 loss scale fell to 0.5 \(below 1\)"):
        _fit_under_fp16_scaler(cache_dir, scaler, steps=6)


def test_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    path = tmp_path / "last.ckpt"
    io_plugin = SafeCheckpointIO()
    io_plugin.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=f"refusing to write checkpoint {path}: the weights w are not finite"):
        io_plugin.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, math.nan])}, "global_step": 2}, path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.ckpt"]


@pytest.fixture()
def tiny_disk(tmp_path, request):
    """A small tmpfs (root only; size from the test's `disk_size` mark, default 1 MB): a disk that really fills."""
    mark = request.node.get_closest_marker("disk_size")
    mount = tmp_path / "disk"
    mount.mkdir()
    size = mark.args[0] if mark else "1m"
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _checkpoint_of(size: int) -> dict:
    return {"state_dict": {"w": torch.ones(size // 4)}, "global_step": size}


def test_full_disk_keeps_the_previous_checkpoint_and_names_path_and_space(tiny_disk):
    path = tiny_disk / "checkpoints" / "last.ckpt"
    io_plugin = SafeCheckpointIO()
    io_plugin.save_checkpoint(_checkpoint_of(400_000), path)
    before = path.read_bytes()
    # more than the disk, and more than what is left beside the old file (the temporary and the old file coexist)
    for size in (2_000_000, 700_000):
        with pytest.raises(CheckpointError, match=rf"cannot write checkpoint {path}: not enough disk space \(\d+\.\d MB "
                                                  r"needed, \d+\.\d MB free") as info:
            io_plugin.save_checkpoint(_checkpoint_of(size), path)
        assert len(str(info.value).splitlines()) == 1
        assert path.read_bytes() == before and os.listdir(path.parent) == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["global_step"] == 400_000


@pytest.mark.disk_size("3m")  # the run's checkpoints are 1.3 MB each: two fit
def test_full_disk_during_training_is_one_clear_error_and_keeps_the_last_checkpoint(tiny_disk, cache_dir):
    run_dir = tiny_disk / "run"
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {run_dir}/checkpoints/.*not enough disk space"):
        _train(run_dir, cache_dir, "trainer.keep_last_checkpoints=10")
    kept = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert kept and all(_finite(p) for p in kept)  # every file under a final name is complete
    assert not list((run_dir / "checkpoints").glob(".*"))  # no temporary left behind


def test_writer_killed_mid_write_leaves_the_previous_file_and_resume_cleans_up(tmp_path, caplog):
    ckpt_dir = tmp_path / "checkpoints"
    target = ckpt_dir / "last.ckpt"
    write_file_atomically(b"old complete checkpoint", target)
    code = f"from gptframe.training.checkpoint_io import write_file_atomically as w; w(b'x' * 4096, {str(target)!r})"
    writer = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, WRITE_DELAY_ENV: "30"})
    deadline = time.time() + 30
    while not list(ckpt_dir.glob(".last.ckpt.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    partial = list(ckpt_dir.glob(".last.ckpt.tmp-*"))
    assert len(partial) == 1 and partial[0].stat().st_size == 2048  # half written when it died
    assert target.read_bytes() == b"old complete checkpoint"
    with caplog.at_level(logging.INFO, logger="gptframe"), pytest.raises(CheckpointError, match="none of the checkpoints"):
        resolve_resume("auto", tmp_path)  # our fake bytes are no checkpoint; the partial is gone either way
    assert not partial[0].exists() and "removed 1 partial checkpoint" in caplog.text


def test_resume_auto_logs_what_it_took_and_what_it_skipped(tmp_path, caplog):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    meta = {"task": "clm", "model_config": {}, "tokenizer_files": {}}
    for name, step in (("last.ckpt", 10), ("step000015.ckpt", 15)):
        buffer = io.BytesIO()
        torch.save({"gptframe": meta, "state_dict": {}, "global_step": step}, buffer)
        write_file_atomically(buffer.getvalue(), ckpt_dir / name)
    (ckpt_dir / "step000020.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")  # e.g. written by another tool
    with caplog.at_level(logging.INFO, logger="gptframe"):
        assert resolve_resume("auto", tmp_path) == ckpt_dir / "step000015.ckpt"
    assert "resume=auto: taking step000015.ckpt (step 15); skipped step000020.ckpt (unreadable: " in caplog.text
    assert "last.ckpt (step 10, not newer)" in caplog.text
