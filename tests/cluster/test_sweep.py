"""A Hydra multirun through hydra/launcher=slurm (hydra-submitit-launcher): each job of the sweep is a SLURM job whose
ranks submitit starts with srun (tasks_per_node=2 on one node), and Lightning joins them through SLURM's environment."""

from __future__ import annotations

import json
import os
import subprocess

from tests.cluster.conftest import TINY_GPT
from tests.conftest import BIN, REPO


def test_submitit_slurm_sweep_runs_two_ddp_jobs(slurm_env, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        [str(BIN / "gptframe-train"), "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.timeout_min=10", "trainer=ddp", "trainer.accelerator=cpu", *TINY_GPT,
         f"data.cache_dir={cache_dir}", "trainer.val_check_interval=10", "trainer.log_every_n_steps=5",
         "trainer.max_steps=10,20"],
        capture_output=True, text=True, cwd=REPO, env=slurm_env, timeout=300,
    )
    logs = "\n".join(f"--- {p} ---\n{p.read_text()[-3000:]}" for p in sorted(sweep.glob(".submitit/*/*_0_log.*")))
    assert res.returncode == 0, f"{res.stderr[-4000:]}\n{logs}"
    assert "Submitit 'slurm' sweep output dir" in res.stdout + res.stderr
    for job_num, steps in ((0, 10), (1, 20)):  # each job in its own sweep subdir, its run dir
        summary = json.loads((sweep / str(job_num) / "summary.json").read_text())
        assert (summary["step"], summary["world_size"], summary["num_nodes"]) == (steps, 2, 1), summary
        assert summary["run_dir"] == str(sweep / str(job_num))
    # submitit submitted them as one SLURM job array (one folder per array task) asking for 2 tasks per node
    batch_files = list(sweep.glob(".submitit/*/*_submission.sh"))
    assert len(batch_files) == 1, os.listdir(sweep / ".submitit")
    assert "#SBATCH --ntasks-per-node=2" in batch_files[0].read_text()
    assert len(list(sweep.glob(".submitit/*_[01]"))) == 2, os.listdir(sweep / ".submitit")
