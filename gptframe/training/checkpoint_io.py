"""How checkpoints reach the disk: whole or not at all, never with non-finite weights, and loaded without code.

- A `.ckpt` file is serialised in memory, written to a hidden temporary sibling (`.NAME.tmp-PID`), fsync'ed and
  renamed into place (then the directory is fsync'ed): a reader, a crash or a SIGKILL at any moment leaves either the
  previous file or the new one under the final name, never a part. Lightning's own `_atomic_save` writes the final
  name in place on local disks.
- A sharded checkpoint directory (trainer=fsdp) is written by all ranks into a hidden temporary directory and
  published by one atomic rename (renameat2 RENAME_EXCHANGE when it replaces an existing one).
- A full disk (ENOSPC, EDQUOT) fails with a CheckpointError naming the path, the bytes needed and the bytes free,
  and leaves the previous checkpoint as it was.
- Weights that are NaN or infinite are never written: the save fails instead (see fault_tolerance for the guard
  that stops or skips such steps before they reach the weights).
- Loading goes through `safe_torch_load` (weights_only): Lightning's resume reads the file through this plugin too.

Test-only hook: GPTFRAME_TEST_CHECKPOINT_WRITE_DELAY_S=SECONDS sleeps halfway through writing each checkpoint file,
so a fault-injection test can kill a process during a write (tests/integration/test_fault_injection.py).
"""

from __future__ import annotations

import ctypes
import errno
import io
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

from gptframe.errors import CheckpointError
from gptframe.training.safe_loading import read_dcp_metadata, safe_torch_load

log = logging.getLogger(__name__)

WRITE_DELAY_ENV = "GPTFRAME_TEST_CHECKPOINT_WRITE_DELAY_S"
TMP_MARK = ".tmp-"  # temporary names: .NAME.tmp-PID (hidden, so no checkpoint glob ever matches them)


def temporary_name(path: Path, pid: int | None = None) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid() if pid is None else pid}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(path: Path, needed: int) -> CheckpointError:
    free = shutil.disk_usage(path.parent).free
    return CheckpointError(
        f"cannot write checkpoint {path}: not enough disk space ({needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB "
        f"free on {path.parent}); the previous checkpoints are intact; free space there, or lower "
        "trainer.keep_last_checkpoints"
    )


def _write_with_test_delay(f, data: memoryview) -> None:
    delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
    if delay <= 0:
        f.write(data)
        return
    half = len(data) // 2
    f.write(data[:half])
    f.flush()
    time.sleep(delay)
    f.write(data[half:])


def write_file_atomically(data: bytes, path: str | Path) -> None:
    """`data` under `path`, all or nothing, durable once this returns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            _write_with_test_delay(f, memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, len(data)) from None
        raise


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors holding a NaN or an infinity (a sharded tensor: this rank's shard)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            local = value.to_local() if hasattr(value, "to_local") else value
            by_device.setdefault(local.device, []).append((name, torch.isfinite(local).all()))
    bad = []
    for flags in by_device.values():  # one host sync per device, not one per tensor
        bad += [name for (name, _), ok in zip(flags, torch.stack([f for _, f in flags]).tolist(), strict=True) if not ok]
    return bad


def _refuse_non_finite(names: list[str], path: Path) -> CheckpointError:
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return CheckpointError(
        f"refusing to write checkpoint {path}: the weights {listed} are not finite (NaN or inf); the previous "
        "checkpoints are intact"
    )


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic, durable, finite-only writes and weights_only reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise _refuse_non_finite(bad, path)
        t0 = time.perf_counter()
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_file_atomically(buffer.getbuffer(), path)
        log.info("checkpoint: wrote %s (%.0f MB) in %.2f s", path.name, buffer.getbuffer().nbytes / 1e6,
                 time.perf_counter() - t0)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return safe_torch_load(path)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the call is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


def publish_directory(tmp: Path, target: Path) -> None:
    """Rename a complete directory into place; an existing `target` is swapped out in one step and then removed.
    (data_pipelines.prepare.publish_dir fills and publishes in one process; here every rank fills the directory.)"""
    for file in tmp.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    if target.exists() and _exchange(tmp, target):
        _fsync_dir(target.parent)
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        return
    if target.is_dir():  # no atomic exchange here: a short window without `target` (resume=auto takes another)
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.rename(tmp, target)
    _fsync_dir(target.parent)


class SafeModelParallelStrategy(ModelParallelStrategy):
    """trainer=fsdp: sharded checkpoint directories written to a temporary directory by all ranks, then published
    by rank 0 with one rename; non-finite weights (on any rank) refuse the save on every rank."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(filepath))
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if self.reduce_boolean_decision(bool(bad), all=False):
            raise _refuse_non_finite(bad or ["(on another rank)"], path)
        tmp = temporary_name(path, pid=self.broadcast(os.getpid()))
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier("gptframe_checkpoint_tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            self.barrier("gptframe_checkpoint_written")
            if self.global_rank == 0:
                publish_directory(tmp, path)
        except OSError as e:
            written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.is_dir() else 0
            if self.global_rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(path, written) from None  # a lower bound: what was written before the disk filled
            raise
        self.barrier("gptframe_checkpoint_published")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir():  # Lightning reads the index with a bare pickle.load: check it first
            read_dcp_metadata(path)
        return super().load_checkpoint(path, weights_only=True)


class _SameStateKey(ModelCheckpoint):
    """Saves and restores its state under ModelCheckpoint's key, so checkpoints of runs started before these
    subclasses existed resume with their best score and paths, and the other way round."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)


class KeepLastCheckpoints(_SameStateKey):
    """Periodic `stepNNNNNN.ckpt` checkpoints, of which the newest `keep` stay (None: all). Pruned by listing the
    directory after each save, not from Lightning's own top-k record: that record is restored from the checkpoint a
    run resumes from, which was written before it counted itself, so a killed and resumed run would leave orphans."""

    def __init__(self, dirpath: Path, every_n_steps: int, keep: int | None):
        super().__init__(dirpath=dirpath, filename="step{step:06d}", every_n_train_steps=every_n_steps, save_top_k=-1,
                         auto_insert_metric_name=False)
        self.keep = keep

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.prune(trainer)

    def prune(self, trainer) -> list[Path]:
        """Delete all but the newest `keep` periodic checkpoints (rank 0; after the newest is published)."""
        if not self.keep or not trainer.is_global_zero or self.dirpath is None:
            return []
        periodic = sorted(Path(self.dirpath).glob("step[0-9]*.ckpt"))  # zero-padded steps: name order is step order
        stale = periodic[: -self.keep]
        for path in stale:
            trainer.strategy.remove_checkpoint(path)
        return stale


def link_file_atomically(source: Path, path: Path) -> None:
    """`path` as a second name of the complete file `source` (a hard link), published by rename: all or nothing."""
    tmp = temporary_name(path)
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class KeepBestCheckpoint(_SameStateKey):
    """ModelCheckpoint(save_top_k=1) that, after each validation, deletes any other `best-*` file in its directory:
    a run killed after saving a new best and resumed from an earlier checkpoint would otherwise keep both.

    When the best checkpoint was written at this very step, `last.ckpt` becomes a hard link to it instead of a second
    copy of the same state (fine-tuning improves at most validations: one write instead of two, ~0.5 s per 270 MB
    here). The last path is fixed from the start, so every file's saved state names it and the two are identical."""

    def __init__(self, **kwargs):
        super().__init__(enable_version_counter=False, **kwargs)
        if self.save_last and self.dirpath is not None:
            self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        self.last_saved_step: int | None = None  # the step last.ckpt holds, when this process wrote it

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        self._write_last(trainer, monitor_candidates)
        if self.save_last:
            self.last_saved_step = trainer.global_step

    def _write_last(self, trainer, monitor_candidates) -> None:
        fresh = self._last_global_step_saved == trainer.global_step and self._last_checkpoint_saved == self.best_model_path
        if not (self.save_last and self.best_model_path and fresh):  # the same on every rank
            return super()._save_last_checkpoint(trainer, monitor_candidates)
        best = Path(self.best_model_path)
        last = Path(self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST))
        linked = False
        if trainer.is_global_zero and best.is_file():  # a sharded checkpoint (a directory) is written again
            try:
                link_file_atomically(best, last)
                linked = True
                log.info("checkpoint: %s is %s (a hard link: the same step)", last.name, best.name)
            except OSError:  # a file system without hard links: write the copy
                pass
        if not trainer.strategy.broadcast(linked):  # rank 0's outcome, so every rank takes the same branch
            return super()._save_last_checkpoint(trainer, monitor_candidates)
        self.last_model_path = str(last)
        trainer.strategy.barrier()

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.is_global_zero or self.dirpath is None or not self.best_model_path:
            return
        prefix = (self.filename or "").split("{")[0]
        for path in Path(self.dirpath).glob(f"{prefix}*{self.FILE_EXTENSION}"):
            if prefix and path != Path(self.best_model_path) and path.name != self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION:
                trainer.strategy.remove_checkpoint(path)
