"""Tests on a real SLURM cluster: two nodes (n1, n2) on localhost, started by `make test-cluster` (.ci/slurm-cluster.sh).

Without a running cluster every test here fails and says how to start one. Jobs run on CPU with gloo; `MASTER_ADDR`
is 127.0.0.1 because the node names n1/n2 do not resolve (on a real cluster Lightning takes the first node's name).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, TINY_RUN

NODES = ("n1", "n2")
START_HINT = (
    "no SLURM cluster to run on: `make test-cluster` starts one for these tests; by hand: "
    '`eval "$(.ci/slurm-cluster.sh start)"` (it prints `export SLURM_CONF=...`), then `pytest tests/cluster`'
)
# The test cluster's nodes have no GPUs and 2 CPUs each: one rank per node, and a time limit as a safety net.
CPU_JOB = ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED"}
# tests/conftest.py's tiny char-level GPT, less the step counts and cadences each cluster test sets for itself.
SET_BY_CLUSTER_TESTS = ("trainer.max_steps=", "trainer.val_check_interval=", "trainer.log_every_n_steps=",
                        "trainer.eval_batches=", "trainer.final_eval_batches=")
TINY_GPT = [o for o in TINY_RUN if not o.startswith(SET_BY_CLUSTER_TESTS)] + [
    "trainer.eval_batches=2", "trainer.final_eval_batches=4"]


def _sinfo_nodes(env: dict) -> str:
    res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=env, timeout=30)
    return res.stdout if res.returncode == 0 else res.stderr


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory) -> dict:
    """The environment jobs are submitted with (sbatch passes it on to them): the venv first on PATH, one thread per
    process, the test cluster's SLURM_CONF, the master address of the two localhost nodes, and no W&B credentials."""
    conf = os.environ.get("SLURM_CONF")
    if not conf or not Path(conf).is_file():
        pytest.fail(f"SLURM_CONF is {'not set' if not conf else f'{conf!r}, which does not exist'}: {START_HINT}")
    if shutil.which("sbatch") is None:
        pytest.fail(f"sbatch is not installed: {START_HINT}")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1",
           "HOME": str(tmp_path_factory.mktemp("home"))}  # no ~/.netrc: W&B stays offline
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "SLURM_JOB_ID", "SLURM_NTASKS"):
        env.pop(var, None)
    states = _sinfo_nodes(env)
    up = {line.split()[0] for line in states.splitlines() if re.fullmatch(r"\S+ (idle|mix|alloc)", line.strip())}
    if not set(NODES) <= up:
        pytest.fail(f"the test cluster's nodes {NODES} are not up (sinfo: {states.strip()!r}): {START_HINT}")
    return env


@dataclass
class Job:
    id: str
    out: Path  # slurm-<id>.out: the batch script's and the ranks' output

    def log_tail(self, chars: int = 6000) -> str:
        text = self.out.read_text(errors="replace") if self.out.exists() else f"({self.out} does not exist)"
        return f"--- {self.out} (last {chars} characters) ---\n{text[-chars:]}"


class Slurm:
    """sbatch / scontrol / scancel for one test; every job it submitted is cancelled at the end of the test."""

    def __init__(self, env: dict, workdir: Path):
        self.env, self.workdir = env, workdir
        self.jobs: list[Job] = []

    def sbatch(self, script: str, *args: str, options: tuple[str, ...] = CPU_JOB) -> Job:
        """Submit launch/slurm/<script> with sbatch options and Hydra overrides; it runs in the test's tmp dir."""
        res = subprocess.run(
            ["sbatch", "--parsable", f"--output={self.workdir}/slurm-%j.out", *options,
             str(REPO / "launch" / "slurm" / script), *args],
            capture_output=True, text=True, cwd=self.workdir, env=self.env, timeout=60,
        )
        assert res.returncode == 0, f"sbatch {script} failed: {res.stderr}"
        job_id = res.stdout.strip().split(";")[0]
        job = Job(job_id, self.workdir / f"slurm-{job_id}.out")
        self.jobs.append(job)
        return job

    def info(self, job: Job) -> dict[str, str]:
        """scontrol's fields of the job (JobState, Restarts, ExitCode, ...); {} once SLURM has forgotten it."""
        res = subprocess.run(["scontrol", "show", "job", "-o", job.id], capture_output=True, text=True, env=self.env,
                             timeout=30)
        return dict(f.split("=", 1) for f in res.stdout.split() if "=" in f) if res.returncode == 0 else {}

    def wait(self, job: Job, until, timeout: float, what: str) -> dict[str, str]:
        """Poll until `until(info)` is true; on timeout cancel the job and fail with its output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info(job)
            if until(info):
                return info
            time.sleep(0.5)
        self.cancel(job)
        pytest.fail(f"job {job.id}: not {what} after {timeout:.0f} s (last state {self.info(job).get('JobState')})\n"
                    f"{job.log_tail()}")

    def wait_finished(self, job: Job, timeout: float) -> dict[str, str]:
        """Wait for the job's end (after any requeues) and require COMPLETED, with its output if not."""
        info = self.wait(job, lambda i: i.get("JobState") in FINAL_STATES, timeout, "finished")
        assert info["JobState"] == "COMPLETED", (
            f"job {job.id} ended {info['JobState']} (exit code {info.get('ExitCode')})\n{job.log_tail()}"
        )
        return info

    def cancel(self, job: Job, signal: str | None = None) -> None:
        subprocess.run(["scancel", *([f"--signal={signal}"] if signal else []), job.id], env=self.env, timeout=30,
                       capture_output=True)


@pytest.fixture()
def slurm(slurm_env, tmp_path):
    cluster = Slurm(slurm_env, tmp_path)
    yield cluster
    for job in cluster.jobs:
        if cluster.info(job).get("JobState") not in FINAL_STATES | {None}:
            cluster.cancel(job)
