"""One training run, start to finish: resume or init_from, tokenizer + data, model, fit, final evaluation, summary.

The same flow serves every task; what differs (the data module, the metrics in the summary) is looked up by task.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from data_pipelines.tokenizers import Tokenizer, tokenizer_from_files
from gptframe.config import TrainConfig, split_model_schema
from gptframe.errors import CheckpointError, ConfigError
from gptframe.loading import LoadedModel, load_model
from gptframe.models.factory import model_config_from_dict, transfer_weights
from gptframe.registry import architecture_of
from gptframe.tasks import TASKS
from gptframe.tasks.base import TaskData
from gptframe.training.checkpoints import CHECKPOINT_KEY, LAST, read_checkpoint_meta
from gptframe.training.loggers import build_logger, finish_logger, logger_callbacks, scrub_secrets
from gptframe.training.resume import resolve_resume  # trust (issue 11): newest complete checkpoint, logged
from gptframe.training.trainer import build_trainer, resolve_topology, world_size

log = logging.getLogger("gptframe")

SUMMARY_FILE = "summary.json"


def check_same_architecture(ckpt_model: dict, model, ckpt_path: Path) -> None:
    current = dataclasses.asdict(model)
    # dropout may change on resume; everything that shapes the weights may not
    diffs = {k: (ckpt_model.get(k), v) for k, v in current.items() if "dropout" not in k and ckpt_model.get(k) != v}
    if diffs:
        listed = ", ".join(f"model.{k}: checkpoint {a} vs config {b}" for k, (a, b) in diffs.items())
        raise CheckpointError(
            f"cannot resume from {ckpt_path}: it was trained with a different model ({listed}); "
            "use the same model config, or a new name=... for a fresh run"
        )


@dataclass
class Source:
    """Where the run's tokenizer, architecture and (for init_from) weights come from."""

    tokenizer: Tokenizer | None = None
    model_config: object = None  # the architecture's config
    init: LoadedModel | None = None  # the model loaded from model.init_from
    init_from: str | None = None
    resume_meta: dict | None = None
    labels: list[str] | None = None


def resolve_source(cfg: TrainConfig, ckpt_path: Path | None) -> Source:
    model_cfg, init_from = split_model_schema(cfg.model)
    if ckpt_path is not None:  # a resumed run keeps its tokenizer, architecture and labels
        meta = read_checkpoint_meta(ckpt_path)[CHECKPOINT_KEY]
        if meta["task"] != cfg.task.name:
            raise CheckpointError(f"cannot resume {ckpt_path}: it is a task={meta['task']} run, not task={cfg.task.name}")
        log.info("resume: continuing from %s", ckpt_path)
        # with init_from the architecture came from there; otherwise the config must still describe the checkpoint
        config = model_config_from_dict(meta["model_config"]) if init_from else model_cfg
        return Source(tokenizer_from_files(meta["tokenizer_files"]), config, resume_meta=meta, labels=meta["labels"])
    if init_from:
        init = load_model(init_from)
        log.info("init_from: %s (%s %s model)", init_from, init.arch.upper(), init.task)
        return Source(init.tokenizer, init.config, init=init, init_from=str(init_from))
    return Source(model_config=model_cfg)


def keeps_head(theirs: list[str] | None, ours: list[str] | None) -> bool:
    """An init model's labelled head carries over under the same label names in the same order (build_task_data
    takes its order), or when its labels are transformers' placeholders LABEL_0, LABEL_1, ... (unnamed: by position,
    as run_glue.py / run_ner.py keep them)."""
    if theirs is None or theirs == ours:
        return True
    return theirs == [f"LABEL_{i}" for i in range(len(theirs))]


def build_task_data(task_cls, cfg: TrainConfig, source: Source) -> TaskData:
    """The task's data; labelled in the init model's order when it has the data's labels in another order, so its
    head rows keep their meaning (as run_ner.py / run_glue.py take the model's label2id)."""
    data = task_cls.build_data(cfg, source.tokenizer, source.model_config, source.labels)
    theirs = source.init.labels if source.init is not None else None
    if theirs and data.labels and theirs != data.labels and sorted(theirs) == sorted(data.labels):
        log.info("init_from: labels in the init model's order %s", theirs)
        data = task_cls.build_data(cfg, source.tokenizer, source.model_config, theirs)
    return data


def run_training(cfg: TrainConfig, run_dir: Path, raw_cfg: DictConfig | None = None) -> dict:
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task_name = cfg.task.name

    # Everything that can reject the input runs before anything is written to the run dir.
    task_cls = TASKS[task_name]
    ckpt_path = resolve_resume(cfg.resume, run_dir)
    source = resolve_source(cfg, ckpt_path)
    spec = architecture_of(source.model_config)
    try:
        task_cls.check_architecture(spec)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    data = build_task_data(task_cls, cfg, source)
    tokenizer, model_cfg, datamodule, labels = data.tokenizer, data.model_config, data.datamodule, data.labels
    if source.resume_meta is not None:
        check_same_architecture(source.resume_meta["model_config"], model_cfg, ckpt_path)

    trainer_cfg = resolve_topology(cfg.trainer)
    world = world_size(trainer_cfg)
    log.info(
        "topology: strategy %s, %d node(s) x %s process(es) per node = world size %d",
        trainer_cfg.strategy, trainer_cfg.num_nodes, trainer_cfg.devices, world,
    )
    if trainer_cfg.global_batch_tokens:
        trainer_cfg = _accumulation_for(trainer_cfg, data.tokens_per_example * cfg.data.batch_size * world)
    if task_cls.epoch_based and trainer_cfg.max_epochs:
        per_epoch = datamodule.steps_per_epoch(world, trainer_cfg.accumulate_grad_batches)
        trainer_cfg = dataclasses.replace(
            trainer_cfg, max_steps=trainer_cfg.max_epochs * per_epoch, val_check_interval=per_epoch
        )
        log.info("schedule: %d epochs x %d steps = %d steps", trainer_cfg.max_epochs, per_epoch, trainer_cfg.max_steps)

    resolved = OmegaConf.to_container(raw_cfg, resolve=True) if raw_cfg is not None else dataclasses.asdict(cfg)
    resolved = scrub_secrets(resolved)  # what config.yaml, checkpoints and loggers keep: no API keys or passwords
    task = task_cls(
        model_config=dataclasses.asdict(model_cfg),
        task_config=dataclasses.asdict(cfg.task),
        max_steps=trainer_cfg.max_steps,
        compile=trainer_cfg.compile,
        activation_checkpointing=trainer_cfg.activation_checkpointing,
        reshard_after_forward=trainer_cfg.fsdp_reshard_after_forward,
        tokenizer_files=tokenizer.to_files(),
        labels=labels,
        run_config=resolved,
    )
    if source.init is not None:
        heads = keeps_head(source.init.labels, labels)
        copied = transfer_weights(source.init.model, task.model, heads=heads)
        why = "" if heads else f" (its labels {source.init.labels} are not the data's)"
        log.info("init_from: copied %s%s", copied, why)
    params = task.model.num_params()
    logger = build_logger(cfg.logger, run_dir, cfg.name, resolved)
    trainer, parts = build_trainer(
        trainer_cfg, run_dir, logger, monitor=task_cls.monitor, find_unused_parameters=task.has_unused_parameters,
        extra_callbacks=logger_callbacks(cfg.logger, logger, task_cls, cfg.seed),
    )
    tokens_per_step = data.tokens_per_example * cfg.data.batch_size * trainer_cfg.accumulate_grad_batches * trainer.world_size
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        tokenizer.save(run_dir / "tokenizer")
    log.info(
        "model: %s %s parameters (%.2fM) %s | task: %s | tokenizer: %s | data: %s",
        model_cfg.arch.upper(), f"{params:,}", params / 1e6, spec.describe(model_cfg), task_name, tokenizer,
        data.description,
    )

    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)  # never unpickle code
    last = run_dir / "checkpoints" / LAST
    if parts["best"].last_saved_step != trainer.global_step:  # the final step, unless its validation saved it
        trainer.save_checkpoint(last, weights_only=False)

    if _validated_as_final(parts["history"], trainer, datamodule, trainer_cfg):
        # e.g. epoch-based fine-tuning: the last epoch's validation ran on the final weights over the same batches
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    else:
        if hasattr(datamodule, "eval_batches"):
            datamodule.eval_batches = trainer_cfg.final_eval_batches
        final = {k: float(v) for k, v in trainer.validate(task, datamodule=datamodule, verbose=False)[0].items()}
    history: list = parts["history"].train
    best = parts["best"]
    summary = {
        "task": task_name,
        "arch": model_cfg.arch,
        "step": trainer.global_step,
        "train_loss": history[-1][1] if history else None,
        "val_loss": final["val/loss"],
        **task_cls.summary_metrics(final),
        f"best_{task_cls.monitor[0].replace('/', '_')}": float(best.best_model_score)
        if best.best_model_score is not None
        else None,
        "tokens_per_s": parts["throughput"].tokens_per_s,
        "mfu": parts["throughput"].mfu,  # None when the device's peak FLOP/s is unknown (CPU, unlisted GPU)
        "tokens_seen": trainer.global_step * tokens_per_step,  # classification: an upper bound (padded length)
        "wall_s": time.perf_counter() - t_start,
        "params": params,
        "checkpoint": str(last.resolve()),
        "best_checkpoint": str(Path(best.best_model_path).resolve()) if best.best_model_path else None,
        "run_dir": str(run_dir.resolve()),
        "device": str(task.device),
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "strategy": trainer_cfg.strategy,
        "tokenizer": tokenizer.identity(),
        **(data.summary or {}),
        "labels": labels,
        "init_from": source.init_from,
        # mixtures: per source, its weight, the tokens and epochs of it the run saw, its prepared data
        "data_sources": datamodule.source_summary(trainer.global_step) if hasattr(datamodule, "source_summary") else None,
    }
    if trainer.is_global_zero:
        tmp = run_dir / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(run_dir / SUMMARY_FILE)
        parts["history"].plot(run_dir / "loss_curve.png", f"{cfg.name}: {model_cfg.arch.upper()} {params / 1e6:.2f}M")
        metrics = " | ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("val_") and v is not None)
        log.info(
            "done: step %d | train loss %.4f | %s | %.0f tokens/s | %.1fs | %s",
            summary["step"], summary["train_loss"] or float("nan"), metrics, summary["tokens_per_s"],
            summary["wall_s"], last,
        )
    finish_logger(logger, summary)
    return summary


def _validated_as_final(history, trainer, datamodule, trainer_cfg) -> bool:
    """True when training ended with a validation that the final evaluation would repeat exactly (same step, same
    batches): running it again costs a whole val pass (for QA on CPU, as long as several training steps)."""
    same_batches = not hasattr(datamodule, "eval_batches") or trainer_cfg.final_eval_batches == trainer_cfg.eval_batches
    ran_here = "val/loss" in trainer.callback_metrics  # not when a finished run is resumed and fit does nothing
    return bool(history.val) and history.val[-1][0] == trainer.global_step and same_batches and ran_here


def _accumulation_for(cfg, tokens_per_micro_step: int):
    """accumulate_grad_batches that makes an optimizer step `global_batch_tokens` (nearest whole number)."""
    accumulate = max(1, round(cfg.global_batch_tokens / tokens_per_micro_step))
    if accumulate * tokens_per_micro_step != cfg.global_batch_tokens:
        log.warning(
            "trainer.global_batch_tokens=%d is not a multiple of %d tokens per micro-step (all ranks): using %d",
            cfg.global_batch_tokens, tokens_per_micro_step, accumulate * tokens_per_micro_step,
        )
    log.info("schedule: %d micro-batches per optimizer step (%d tokens)", accumulate, accumulate * tokens_per_micro_step)
    return dataclasses.replace(cfg, accumulate_grad_batches=accumulate)
