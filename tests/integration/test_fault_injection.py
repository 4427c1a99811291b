"""Fault injection: SIGKILL a training run again and again, many times in the middle of a checkpoint write, resume it
with resume=auto each time, and finish with exactly the uninterrupted run's result (CPU, deterministic).

Checkpoint writes are slowed down with the test-only GPTFRAME_TEST_CHECKPOINT_WRITE_DELAY_S (checkpoint_io sleeps
halfway through each file), so a kill lands inside one: two kills in three wait for the second temporary checkpoint
file of the process to appear (the first completes, so every such cycle makes progress), every third comes at a random
moment (start-up, data loading, a step, validation, the final save). Results: benchmarks/RESULTS.md section 6.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gptframe.training.checkpoint_io import WRITE_DELAY_ENV
from tests.conftest import BIN, REPO, TINY_RUN

pytestmark = pytest.mark.slow

KILLS = 20
RUN = [
    *TINY_RUN, "model.dropout=0.1",  # dropout: the resumed RNG state matters
    "trainer.max_steps=150", "trainer.val_check_interval=25", "trainer.checkpoint_every_n_steps=3",
    "trainer.keep_last_checkpoints=2", "task.lr_decay_steps=150",
]


def _start(run_dir: Path, cache_dir: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", WRITE_DELAY_ENV: str(delay)}
    cmd = [str(BIN / "gptframe-train"), *RUN, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
    err = open(run_dir.parent / f"{run_dir.name}.stderr", "a")  # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    err.close()
    return proc


def _stderr(run_dir: Path) -> str:
    return (run_dir.parent / f"{run_dir.name}.stderr").read_text()[-3000:]


def _partials(proc: subprocess.Popen, ckpt_dir: Path) -> list[Path]:
    return list(ckpt_dir.glob(f".*.tmp-{proc.pid}")) if ckpt_dir.is_dir() else []


def _kill_during_second_write(proc: subprocess.Popen, ckpt_dir: Path, timeout: float = 120) -> bool:
    """SIGKILL while the process writes its second checkpoint file; True if it was killed inside a write."""
    seen: set[str] = set()
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        names = {p.name for p in _partials(proc, ckpt_dir)}
        if names - seen:
            seen |= names
            if len(seen) >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
        time.sleep(0.01)
    return False


def _kill_at_random(proc: subprocess.Popen, ckpt_dir: Path, rng: random.Random) -> bool:
    try:
        proc.wait(timeout=rng.uniform(1.0, 8.0))
        return False
    except subprocess.TimeoutExpired:
        in_write = bool(_partials(proc, ckpt_dir))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return in_write


def test_twenty_sigkills_then_resume_gives_the_uninterrupted_result(tmp_path, cache_dir):
    reference_dir = tmp_path / "reference"
    ref = _start(reference_dir, cache_dir, delay=0)
    assert ref.wait(timeout=600) == 0, _stderr(reference_dir)
    reference = json.loads((reference_dir / "summary.json").read_text())

    run_dir = tmp_path / "killed"
    ckpt_dir = run_dir / "checkpoints"
    rng = random.Random(11)
    kills = in_write = starts = 0
    while True:
        proc = _start(run_dir, cache_dir, delay=0.4)
        starts += 1
        if kills >= KILLS:  # enough: let it finish
            assert proc.wait(timeout=600) == 0, _stderr(run_dir)
            break
        hit = _kill_during_second_write(proc, ckpt_dir) if kills % 3 else _kill_at_random(proc, ckpt_dir, rng)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            in_write += hit
        else:  # it finished (or failed) on its own before the kill
            assert proc.returncode == 0, _stderr(run_dir)
            break
        assert starts < 80, "no progress"

    summary = json.loads((run_dir / "summary.json").read_text())
    log = (run_dir / "train.log").read_text()
    print(f"fault injection: {kills} SIGKILLs ({in_write} during a checkpoint write), {starts} starts, "
          f"final val loss {summary['val_loss']!r} vs uninterrupted {reference['val_loss']!r}")
    assert kills >= KILLS and in_write >= KILLS // 2
    assert summary["step"] == reference["step"] == 150
    assert summary["val_loss"] == reference["val_loss"]  # exactly: CPU, same batches, same RNG states
    assert summary["train_loss"] == reference["train_loss"]
    assert log.count("resume=auto: taking") >= KILLS // 2
    assert not list(ckpt_dir.glob(".*"))  # no partial file survives the final run
    assert sorted(p.name for p in ckpt_dir.glob("step*.ckpt")) == ["step000147.ckpt", "step000150.ckpt"]
    assert [p.name for p in ckpt_dir.glob("best-*.ckpt")] == [Path(reference["best_checkpoint"]).name]
