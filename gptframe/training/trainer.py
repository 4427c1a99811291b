"""Build the Lightning Trainer from `TrainerConfig`: topology, strategy, precision, step-based loop, checkpoints,
callbacks. Everything distributed about a run is decided here (and the model side in `parallelize`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import Logger

from gptframe.config import TrainerConfig
from gptframe.errors import ConfigError
from gptframe.training.callbacks import MetricsHistory, StepProgressBar
from gptframe.training.checkpoint_io import KeepBestCheckpoint, KeepLastCheckpoints, SafeCheckpointIO
from gptframe.training.fault_tolerance import NonFiniteGuard
from gptframe.training.requeue import RequeueOnSignal
from gptframe.training.throughput import ThroughputMonitor

log = logging.getLogger(__name__)


def uses_cuda(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def launcher_topology(env=os.environ) -> tuple[int, int, str] | None:
    """(processes per node, nodes, launcher) when the ranks were started from outside (srun, torchrun, submitit),
    else None. Checked in Lightning's order: SLURM first, then torchrun-style variables."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect() and "SLURM_NTASKS" in env:
        nodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
        per_node = int(env["SLURM_NTASKS_PER_NODE"]) if env.get("SLURM_NTASKS_PER_NODE", "").isdigit() else None
        return per_node or int(env["SLURM_NTASKS"]) // nodes, nodes, "srun"
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:
        per_node = int(env["LOCAL_WORLD_SIZE"])
        return per_node, max(1, int(env["WORLD_SIZE"]) // per_node), "torchrun"
    return None


def _count(devices) -> int:
    return len(devices) if isinstance(devices, list) else int(devices)


def resolve_topology(cfg: TrainerConfig, env=os.environ) -> TrainerConfig:
    """Concrete `devices` and `num_nodes`. Under a launcher, "auto" takes its numbers and explicit values must agree
    with it (a mismatch would hang at the first collective); otherwise "auto" is every GPU, or one CPU process."""
    devices, nodes = cfg.devices, cfg.num_nodes
    launched = launcher_topology(env)
    if launched is not None:
        per_node, launched_nodes, launcher = launched
        if devices != "auto" and _count(devices) != per_node:
            raise ConfigError(
                f"trainer.devices={devices} but {launcher} started {per_node} process(es) per node; "
                f"use trainer.devices=auto (or {per_node})"
            )
        if nodes != "auto" and nodes != launched_nodes:
            raise ConfigError(
                f"trainer.num_nodes={nodes} but {launcher} started processes on {launched_nodes} node(s); "
                f"use trainer.num_nodes=auto (or {launched_nodes})"
            )
        devices = per_node if devices == "auto" else devices
        nodes = launched_nodes
    else:
        if nodes == "auto":
            nodes = 1
        if devices == "auto":
            devices = torch.cuda.device_count() if uses_cuda(cfg.accelerator) else 1
    strategy = cfg.strategy
    if strategy == "auto" and _count(devices) * nodes > 1:
        strategy = "ddp"  # several processes and no choice made: plain data parallel
    return dataclasses.replace(cfg, devices=devices, num_nodes=nodes, strategy=strategy)


def world_size(cfg: TrainerConfig) -> int:
    """Processes over all nodes, for a config from `resolve_topology`."""
    return _count(cfg.devices) * cfg.num_nodes


def build_strategy(cfg: TrainerConfig, find_unused_parameters: bool = False):
    if cfg.strategy == "fsdp":
        # FSDP2 through Lightning: every rank is one data-parallel shard (no tensor parallelism); checkpoints are
        # saved sharded (a directory of .distcp files per checkpoint), which gptframe-export consolidates
        from gptframe.training.checkpoint_io import SafeModelParallelStrategy  # trust: atomic sharded checkpoints

        return SafeModelParallelStrategy(
            data_parallel_size=world_size(cfg), tensor_parallel_size=1, save_distributed_checkpoint=True,
            **process_group_timeout(cfg),
        )
    if cfg.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=find_unused_parameters, gradient_as_bucket_view=True,
                           **process_group_timeout(cfg))
    return "auto"


def process_group_timeout(cfg: TrainerConfig) -> dict:
    """The strategy's `timeout` keyword when the config sets one (else the strategy keeps torch's default)."""
    seconds = cfg.process_group_timeout_s
    return {} if seconds is None else {"timeout": timedelta(seconds=seconds)}


def resolve_precision(precision: str, accelerator: str) -> str:
    """'auto': bf16-mixed where a CUDA GPU supports bf16, else full fp32."""
    if precision != "auto":
        return {"32": "32-true", "64": "64-true"}.get(precision, precision)
    return "bf16-mixed" if uses_cuda(accelerator) and torch.cuda.is_bf16_supported() else "32-true"


def build_trainer(
    cfg: TrainerConfig,
    run_dir: Path,
    logger: Logger | None,
    monitor: tuple[str, str] = ("val/loss", "min"),
    find_unused_parameters: bool = False,
    extra_callbacks: list[L.Callback] | None = None,
) -> tuple[L.Trainer, dict]:
    """The Trainer plus the callbacks the run reads back (history, throughput, checkpoints). `cfg` comes from
    `resolve_topology`; `monitor`: the (metric, min|max) that picks the best checkpoint."""
    ckpt_dir = run_dir / "checkpoints"
    history = MetricsHistory(cfg.log_every_n_steps)
    throughput = ThroughputMonitor(cfg.log_every_n_steps)
    best = KeepBestCheckpoint(  # trust: a ModelCheckpoint that also removes best-* files orphaned by a kill
        dirpath=ckpt_dir,
        filename="best-step{step:06d}",
        monitor=monitor[0],
        mode=monitor[1],
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    guard = NonFiniteGuard(cfg.nonfinite_policy, cfg.nonfinite_max_skips)  # trust: NaN/inf never reach the weights
    callbacks: list[L.Callback] = [history, throughput, best, guard, *(extra_callbacks or [])]
    if RequeueOnSignal.wanted():  # SLURM: checkpoint at a step boundary on SIGUSR1, exit 75 for the script's requeue
        callbacks.append(RequeueOnSignal(ckpt_dir))
    if cfg.checkpoint_every_n_steps:
        # trust: the newest N stay (trainer.keep_last_checkpoints); older ones go once a newer one is published
        callbacks.append(KeepLastCheckpoints(ckpt_dir, cfg.checkpoint_every_n_steps, cfg.keep_last_checkpoints))
    if cfg.enable_progress_bar:
        callbacks.append(StepProgressBar(refresh_rate=max(1, cfg.log_every_n_steps // 2)))
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for fp32 work on Ampere and newer
    accumulate = cfg.accumulate_grad_batches
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=build_strategy(cfg, find_unused_parameters),
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
        plugins=[SafeCheckpointIO()],  # trust: atomic, durable, finite-only writes; weights_only reads
        # not the checkpoint dir: under SLURM, Lightning itself would load an hpc_ckpt_N.ckpt found in
        # default_root_dir before validate; gptframe picks the checkpoint to resume from (resume.resolve_resume)
        default_root_dir=run_dir,
        enable_model_summary=False,
        enable_progress_bar=cfg.enable_progress_bar,
        deterministic=cfg.deterministic,
    )
    return trainer, {"history": history, "throughput": throughput, "best": best}
