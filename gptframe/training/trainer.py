"""Build the Lightning Trainer from `TrainerConfig`: strategy, precision, step-based loop, checkpoints, callbacks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from gptframe.config import LoggerConfig, TrainerConfig
from gptframe.training.callbacks import MetricsHistory, StepProgressBar, TokenThroughput


def resolve_precision(precision: str, accelerator: str) -> str:
    """'auto': bf16-mixed where a CUDA GPU supports bf16, else full fp32."""
    if precision != "auto":
        return {"32": "32-true", "64": "64-true"}.get(precision, precision)
    uses_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if uses_cuda and torch.cuda.is_bf16_supported() else "32-true"


def build_logger(cfg: LoggerConfig, run_dir: Path) -> Logger:
    return CSVLogger(save_dir=run_dir, name="logs")  # logs/version_N/metrics.csv, one version per invocation


def build_trainer(
    cfg: TrainerConfig, run_dir: Path, logger: Logger | None, monitor: tuple[str, str] = ("val/loss", "min")
) -> tuple[L.Trainer, dict]:
    """The Trainer plus the callbacks the run reads back (history, throughput, checkpoints). `monitor`: the
    (metric, min|max) that picks the best checkpoint."""
    ckpt_dir = run_dir / "checkpoints"
    history = MetricsHistory(cfg.log_every_n_steps)
    throughput = TokenThroughput(cfg.log_every_n_steps)
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-step{step:06d}",
        monitor=monitor[0],
        mode=monitor[1],
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    callbacks: list[L.Callback] = [history, throughput, best]
    if cfg.checkpoint_every_n_steps:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="step{step:06d}",
                every_n_train_steps=cfg.checkpoint_every_n_steps,
                save_top_k=-1,
                auto_insert_metric_name=False,
            )
        )
    if cfg.enable_progress_bar:
        callbacks.append(StepProgressBar(refresh_rate=max(1, cfg.log_every_n_steps // 2)))
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for fp32 work on Ampere and newer
    accumulate = cfg.accumulate_grad_batches
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg.precision, cfg.accelerator),
        max_steps=cfg.max_steps,
        max_epochs=-1,
        val_check_interval=cfg.val_check_interval * accumulate,  # Lightning counts micro-batches here
        check_val_every_n_epoch=None,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=cfg.gradient_clip_val or None,
        log_every_n_steps=cfg.log_every_n_steps,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # our samplers are rank-aware and resumable
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        default_root_dir=run_dir,
        enable_model_summary=False,
        enable_progress_bar=cfg.enable_progress_bar,
        deterministic=cfg.deterministic,
    )
    return trainer, {"history": history, "throughput": throughput, "best": best}
