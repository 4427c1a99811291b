"""Preemption on SLURM: SIGUSR1 (what `#SBATCH --signal=USR1@90` sends before the time limit) in the middle of
pretraining on two nodes; the job checkpoints, requeues itself, and the requeued job (same job id, same run dir)
resumes from that checkpoint and finishes: every optimizer step is logged exactly once, to the same W&B run."""

from __future__ import annotations

import json
import time

import pytest
import torch

from gptframe.training.loggers import RUN_ID_FILE
from tests.cluster.conftest import TINY_GPT
from tests.wandb_offline import offline_runs

MAX_STEPS = 600  # about 20 s of training for 2 ranks on 2 cores; the signal comes a few seconds in


def _wait_for_file(slurm, job, path, timeout):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or slurm.info(job).get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING"):
            slurm.cancel(job)
            pytest.fail(f"{path} did not appear (job {slurm.info(job).get('JobState')})\n{job.log_tail()}")
        time.sleep(0.2)


def test_signalled_pretraining_requeues_and_resumes_in_the_same_run_dir(slurm, cache_dir, tmp_path):
    job = slurm.sbatch(
        "pretrain.sbatch", *TINY_GPT, f"data.cache_dir={cache_dir}", "trainer.accelerator=cpu",
        f"trainer.max_steps={MAX_STEPS}", "trainer.val_check_interval=200", "trainer.log_every_n_steps=1",
        "trainer.checkpoint_every_n_steps=50", "logger=wandb", "logger.mode=offline", "logger.log_samples=false",
    )
    run_dir = tmp_path / "outputs" / "slurm" / f"gptframe-pretrain-{job.id}"
    # training is under way once the first periodic checkpoint is there
    _wait_for_file(slurm, job, run_dir / "checkpoints" / "step000050.ckpt", timeout=120)
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    slurm.cancel(job, signal="USR1")

    info = slurm.wait_finished(job, timeout=240)
    out = job.out.read_text()
    assert info["Restarts"] == "1", f"expected one requeue, scontrol says Restarts={info['Restarts']}\n{job.log_tail()}"
    assert f"job {job.id} (restart 1)" in out  # the requeued job ran the same script again

    # the checkpoint taken on the signal, mid-run, and the requeued job resumed from it in the same run dir
    hpc = run_dir / "checkpoints" / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), f"no requeue checkpoint\n{job.log_tail()}"
    saved_step = torch.load(hpc, map_location="cpu", weights_only=False, mmap=True)["global_step"]
    assert 50 <= saved_step < MAX_STEPS
    assert f"resume: continuing from {hpc}" in out
    # restored once, by the resumed fit: the final evaluation scores the trained model, not the requeue checkpoint
    assert out.count(f"Restoring states from the checkpoint path at {hpc}") == 1, job.log_tail()
    # the marker that made the batch script requeue is gone
    assert not list(tmp_path.glob(".gptframe-requeue-*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["step"], summary["world_size"]) == (MAX_STEPS, 2), summary

    # W&B (offline): one run id, kept in the run dir, for both jobs; each logged its part of the steps
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    before, after = offline_runs(run_dir)
    assert before.run_id == after.run_id == run_id
    steps_before = [row["trainer/global_step"] for row in before.rows_with("train/loss")]
    steps_after = [row["trainer/global_step"] for row in after.rows_with("train/loss")]
    assert steps_before == list(range(saved_step)), f"the first job should log steps 0..{saved_step - 1}, once each"
    assert steps_after == list(range(saved_step, MAX_STEPS)), (
        f"the requeued job should log steps {saved_step}..{MAX_STEPS - 1}, once each"
    )
