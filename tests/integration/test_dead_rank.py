"""A dead rank under torchrun --max-restarts: SIGKILL one of 2 gloo CPU ranks mid-run; torchrun restarts the job,
which resumes (resume=auto) from the newest checkpoint and ends with the uninterrupted run's result, exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gptframe.training.checkpoint_io import WRITE_DELAY_ENV
from tests.conftest import BIN, REPO, TINY_RUN

pytestmark = pytest.mark.slow

RUN = [*TINY_RUN, "trainer=ddp", "trainer.accelerator=cpu", "data.batch_size=4", "trainer.max_steps=40",
       "trainer.val_check_interval=20", "trainer.checkpoint_every_n_steps=5", "task.lr_decay_steps=40",
       # a backstop: a group that hangs connecting gives up after 5 timeouts (100 s, not 2.5 h) and fails the test
       "trainer.process_group_timeout_s=20"]


def _torchrun(run_dir: Path, cache_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}", "HYDRA_FULL_ERROR": "0",
           "NPROC": "2", "TORCHRUN_ARGS": "--max-restarts=3", WRITE_DELAY_ENV: "0.2"}  # slower: time to kill mid-run
    cmd = [str(REPO / "launch" / "local.sh"), *RUN, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _rank_pid(job: subprocess.Popen, rank: int) -> int | None:
    """The pid of the gptframe-train worker with RANK=rank that `job` started: only children of the job's torchrun
    (launch/local.sh execs it, so it has the job's pid), never a process of another torchrun on this machine."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != job.pid:
                continue
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"gptframe.cli.train" in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def test_killed_rank_restarts_and_resumes_to_the_same_result(tmp_path, cache_dir):
    reference = _torchrun(tmp_path / "reference", cache_dir)
    out = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, out[-3000:]

    run_dir = tmp_path / "killed"
    job = _torchrun(run_dir, cache_dir)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "step000010.ckpt").exists() and time.time() < deadline:
        time.sleep(0.05)
    victim = _rank_pid(job, 1)
    assert victim is not None and job.poll() is None
    os.kill(victim, signal.SIGKILL)
    out = job.communicate(timeout=600)[0]
    (tmp_path / "torchrun.out").write_text(out)
    agent = [line for line in out.splitlines() if "Worker group" in line or "exitcode" in line]
    assert job.returncode == 0, "\n".join(agent) + out[-3000:]

    log = (run_dir / "train.log").read_text()
    # torchrun restarted the job once, and the restarted group connected at once: with torch's shared rendezvous
    # store a restarted rank could read the dead rank's address (2 to 4 failed restarts per run, or a hang);
    # launch/local.sh gives each restart a fresh store (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1)
    assert log.count("topology: strategy ddp") == 2
    assert "resume=auto: taking step0000" in log  # the restarted job continued from a periodic checkpoint
    killed = json.loads((run_dir / "summary.json").read_text())
    ref = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert killed["step"] == ref["step"] == 40 and killed["world_size"] == 2
    assert killed["val_loss"] == ref["val_loss"] and killed["train_loss"] == ref["train_loss"]
