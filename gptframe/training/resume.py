"""Which checkpoint a run continues from (`resume=auto|null|PATH`).

`auto` takes the newest complete checkpoint of the run dir: last.ckpt, the periodic stepNNNNNN.ckpt and the
requeue hpc_ckpt_N.ckpt (files, or directories when sharded) are read (cheaply: only their metadata) and the
highest optimizer step wins. A checkpoint that cannot be read is skipped, and the log says which one was taken and
which were skipped and why. Checkpoints are published by rename (checkpoint_io), so a file under a final name is
complete; what a killed writer left is a hidden temporary (`.NAME.tmp-PID`), which is removed here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from gptframe.errors import CheckpointError, ConfigError
from gptframe.training.checkpoint_io import TMP_MARK
from gptframe.training.checkpoints import LAST, read_checkpoint_meta

log = logging.getLogger("gptframe")


def resume_candidates(run_dir: Path) -> list[Path]:
    """Checkpoints a run can continue from: last.ckpt, the periodic stepNNNNNN.ckpt, and the hpc_ckpt_N.ckpt saved
    on SLURM's requeue signal (files, or directories when sharded). Not best-*.ckpt: an earlier step by design."""
    ckpt_dir = run_dir / "checkpoints"
    globbed = [*sorted(ckpt_dir.glob("step*.ckpt")), *sorted(ckpt_dir.glob("hpc_ckpt_*.ckpt"))]
    return [p for p in [ckpt_dir / LAST, *globbed] if p.exists()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(ckpt_dir: Path) -> list[Path]:
    """Delete the temporary files / directories of checkpoint writers that died (their pid is gone)."""
    pattern = re.compile(rf"\..+\.ckpt{re.escape(TMP_MARK)}(\d+)")
    removed = []
    for path in ckpt_dir.glob(f".*{TMP_MARK}*") if ckpt_dir.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("resume: removed %d partial checkpoint(s) left by a killed writer: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def _read_step(path: Path) -> tuple[int | None, str]:
    """(the optimizer step a checkpoint was saved at, '') or (None, why it cannot be used)."""
    try:
        return int(read_checkpoint_meta(path).get("global_step", 0)), ""
    except CheckpointError as e:
        return None, str(e)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The most advanced readable checkpoint of the run dir (None if there is none); logs the choice."""
    candidates = resume_candidates(run_dir)
    readable, skipped = [], []
    for path in candidates:
        step, why = _read_step(path)
        if step is None:
            skipped.append(f"{path.name} (unreadable: {why})")
        else:
            readable.append((step, path.stat().st_mtime, path))
    if not readable:
        if candidates:
            raise CheckpointError(
                f"none of the checkpoints in {run_dir / 'checkpoints'} can be read ({'; '.join(skipped)}); pass "
                "resume=PATH to pick one, or use a fresh run dir"
            )
        return None
    readable.sort(reverse=True)  # the highest step wins; on a tie the later-saved (a requeue after last.ckpt)
    step, _, chosen = readable[0]
    skipped += [f"{p.name} (step {s}, not newer)" for s, _, p in readable[1:]]
    log.info("resume=auto: taking %s (step %d)%s", chosen.name, step, f"; skipped {', '.join(skipped)}" if skipped else "")
    for line in skipped:
        if "unreadable" in line:
            log.warning("resume=auto: skipped %s", line)
    return chosen


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: auto -> the newest complete checkpoint of the run dir, none if there are
    none; null -> none (and an error if the run dir holds checkpoints); else PATH."""
    if resume is None or str(resume).lower() in ("null", "none", "false"):
        if resume_candidates(run_dir):
            raise ConfigError(
                f"{run_dir} already holds checkpoints; pass resume=auto to continue that run, "
                "or pick another name=... / hydra.run.dir=... for a fresh one"
            )
        return None
    if resume == "auto":
        remove_stale_partials(run_dir / "checkpoints")
        return newest_checkpoint(run_dir)
    return Path(resume).expanduser()
