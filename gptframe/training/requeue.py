"""SLURM preemption: on the requeue signal, checkpoint at the next optimizer-step boundary and exit for a requeue.

`#SBATCH --signal=USR1@90` (or `scancel --signal=USR1 JOBID`) sends SIGUSR1 to every rank. Lightning's own SLURM
handler saves its checkpoint inside the signal handler, i.e. wherever each rank happens to be: in the middle of an
optimizer step (the restored loop counters then log every later step one step too late), on each rank at a different
point (its barrier can meet another rank's gradient all-reduce); then it runs `scontrol requeue` while the ranks keep
training, so they log steps past the checkpoint (logged again after the resume) until SLURM's SIGTERM kills them and
their children, W&B's writer among them, before the last metrics are written.

Here the handler only raises a flag, installed at process start (`install_signal_flag`, from gptframe-train) so a
signal during data preparation or imports is not lost either. At the end of the next optimizer step all ranks agree on
it (one all-reduce) and save `checkpoints/hpc_ckpt_N.ckpt` there; rank 0 then writes the requeue marker (the file
$GPTFRAME_REQUEUE_MARKER names, which the batch script set), that step's metrics are logged, and at the start of the
next batch every rank leaves with exit code 75 through Lightning's exception path, which closes the loggers. The
batch script (launch/slurm/common.sh) requeues the job when it finds the marker, whatever srun's exit code (a rank
still tearing down when another exits can be killed by srun): nothing is killed mid-write. The requeued job keeps its
id, hence its run dir, and resume=auto continues from that checkpoint, so every step runs and is logged exactly once.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1  # what launch/slurm/*.sbatch ask for (--signal=USR1@90), and Lightning's default
REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint saved, run me again (the batch script requeues the job)
MARKER_ENV = "GPTFRAME_REQUEUE_MARKER"  # the file rank 0 writes once the requeue checkpoint is saved

_signalled = False  # this process received the requeue signal (set by the handler, read at step boundaries)


def _on_signal(signum, frame) -> None:
    global _signalled
    _signalled = True


def install_signal_flag(signum: int = REQUEUE_SIGNAL) -> None:
    """Turn the requeue signal into a flag for the rest of this process (its default action would kill it)."""
    signal.signal(signum, _on_signal)


def signal_received() -> bool:
    return _signalled


def next_hpc_checkpoint(ckpt_dir: Path) -> Path:
    """checkpoints/hpc_ckpt_N.ckpt with N one above the highest there (Lightning's naming, which resume=auto reads)."""
    pattern = re.compile(r"hpc_ckpt_(\d+)\.ckpt")
    numbers = [int(m.group(1)) for p in ckpt_dir.glob("hpc_ckpt_*.ckpt") if (m := pattern.fullmatch(p.name))]
    return ckpt_dir / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class RequeueOnSignal(L.Callback):
    """Checkpoint and exit on SLURM's requeue signal. For runs whose ranks srun started (Lightning's SLURM
    environment); `wanted()` says whether this is one."""

    def __init__(self, ckpt_dir: Path, signum: int = REQUEUE_SIGNAL):
        self.ckpt_dir = Path(ckpt_dir)
        self.signum = signum
        self.exit_pending = False  # all ranks: checkpoint saved, leave at the next batch start
        self._step_seen = -1

    @staticmethod
    def wanted() -> bool:
        return SLURMEnvironment.detect() and "SLURM_JOB_ID" in os.environ

    # Before Lightning registers its signal handlers: finding ours in place, it leaves the signal alone (gptframe-train
    # installed it at start already; this covers runs started from Python). A signal outside training (the final
    # evaluation) is ignored: the run is about to finish anyway.
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if signal.getsignal(self.signum) is not _on_signal:
            install_signal_flag(self.signum)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step_seen:  # accumulating: no optimizer step yet
            return
        self._step_seen = trainer.global_step
        # checked on logging steps only, where the ranks synchronise for the logged loss anyway: a check every step
        # would stall the GPU queue (reaction time: log_every_n_steps steps, well inside --signal=USR1@90)
        if trainer.global_step % trainer.log_every_n_steps:
            return
        # every rank takes part in the decision, each step: the ranks got the signal at slightly different times
        if not trainer.strategy.reduce_boolean_decision(signal_received(), all=False):
            return
        if trainer.global_step >= trainer.max_steps:
            return  # the last step: the run finishes on its own
        path = next_hpc_checkpoint(self.ckpt_dir)
        log.info("requeue signal: saving %s at step %d", path, trainer.global_step)
        trainer.save_checkpoint(path)  # collective: every rank has written its part when it returns
        marker = os.environ.get(MARKER_ENV)
        if trainer.is_global_zero and marker:
            Path(marker).parent.mkdir(parents=True, exist_ok=True)
            Path(marker).write_text(f"{path}\n")
        self.exit_pending = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if not self.exit_pending:
            return
        # the saved step's metrics are logged by now; SystemExit goes through Lightning's teardown (loggers closed)
        if trainer.is_global_zero:
            log.info("requeue signal: stopping at step %d for a requeue (exit code %d)", trainer.global_step,
                     REQUEUE_EXIT_CODE)
        raise SystemExit(REQUEUE_EXIT_CODE)  # every rank: the run is not finished (pipeline.sh must not go on)
