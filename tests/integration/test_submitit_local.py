"""hydra/launcher=local: a multirun through submitit's local executor whose jobs have two processes each, started by
submitit (not Lightning); gptframe-train gives them torchrun's variables, and trainer=ddp trains with world size 2."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import TINY_RUN, run_cli

pytestmark = pytest.mark.slow  # a submitit sweep: two jobs of two processes each


def test_submitit_local_sweep_trains_each_job_with_two_processes(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_NNODES"):  # not inside a SLURM allocation
        monkeypatch.delenv(var, raising=False)
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY_RUN if not o.startswith("trainer.max_steps=")]
    res = run_cli(
        "gptframe-train", "-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}",
        "trainer=ddp", "trainer.accelerator=cpu", *tiny, "trainer.val_check_interval=10", f"data.cache_dir={cache_dir}",
        "trainer.max_steps=10,20", timeout=300,
    )
    logs = "\n".join(f"--- {p} ---\n{p.read_text()[-2000:]}" for p in sorted(sweep.glob(".submitit/*/*_log.err")))
    assert res.returncode == 0, f"{res.stderr[-3000:]}\n{logs}"
    for job_num, steps in ((0, 10), (1, 20)):
        summary = json.loads((sweep / str(job_num) / "summary.json").read_text())
        assert (summary["step"], summary["world_size"], summary["strategy"]) == (steps, 2, "ddp"), summary
    # submitit started both processes of each job: one folder per job (named by its id) with the logs of tasks 0 and 1
    job_dirs = [d for d in sweep.glob(".submitit/*") if d.name.isdigit()]
    assert len(job_dirs) == 2, os.listdir(sweep / ".submitit")
    for job_dir in job_dirs:
        assert sorted(p.name for p in job_dir.glob("*_log.out")) == [f"{job_dir.name}_{t}_log.out" for t in (0, 1)]
