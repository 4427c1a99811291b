"""One training run, start to finish: resume, tokenizer + data, model, fit, final evaluation, summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from data_pipelines.datamodule import CausalLMDataModule
from data_pipelines.prepare import prepare
from data_pipelines.tokenizers import Tokenizer, tokenizer_from_files
from gptframe.config import TrainConfig
from gptframe.errors import CheckpointError, ConfigError, TokenizerError
from gptframe.models.gpt import GPTConfig
from gptframe.tasks.causal_lm import CHECKPOINT_KEY, CausalLMTask
from gptframe.training.checkpoints import LAST, load_checkpoint
from gptframe.training.trainer import build_logger, build_trainer

log = logging.getLogger("gptframe")

SUMMARY_FILE = "summary.json"


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: auto -> <run dir>/checkpoints/last.ckpt if present; null -> none; else PATH."""
    last = run_dir / "checkpoints" / LAST
    if resume is None or str(resume).lower() in ("null", "none", "false"):
        if last.exists():
            raise ConfigError(
                f"{run_dir} already holds checkpoints; pass resume=auto to continue that run, "
                "or pick another name=... / hydra.run.dir=... for a fresh one"
            )
        return None
    if resume == "auto":
        return last if last.exists() else None
    return Path(resume).expanduser()


def resolve_model_config(model: GPTConfig, tokenizer: Tokenizer) -> GPTConfig:
    """Vocab size from the tokenizer, padded up to `pad_vocab_size_multiple`; an explicit size must fit it."""
    multiple = model.pad_vocab_size_multiple
    padded = -(-tokenizer.vocab_size // multiple) * multiple
    if model.vocab_size is not None:
        if model.vocab_size < tokenizer.vocab_size:
            raise TokenizerError(
                f"the {tokenizer.kind} tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size={model.vocab_size}; "
                "set model.vocab_size=null (sized from the tokenizer) or a value >= the tokenizer's"
            )
        padded = model.vocab_size
    return dataclasses.replace(model, vocab_size=padded)


def check_same_architecture(ckpt_model: dict, model: GPTConfig, ckpt_path: Path) -> None:
    current = dataclasses.asdict(model)
    # dropout may change on resume; everything that shapes the weights may not
    diffs = {k: (ckpt_model.get(k), v) for k, v in current.items() if k != "dropout" and ckpt_model.get(k) != v}
    if diffs:
        listed = ", ".join(f"model.{k}: checkpoint {a} vs config {b}" for k, (a, b) in diffs.items())
        raise CheckpointError(
            f"cannot resume from {ckpt_path}: it was trained with a different model ({listed}); "
            "use the same model config, or a new name=... for a fresh run"
        )


def run_training(cfg: TrainConfig, run_dir: Path, raw_cfg: DictConfig | None = None) -> dict:
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # Everything that can reject the input runs before anything is written to the run dir.
    ckpt_path = resolve_resume(cfg.resume, run_dir)
    tokenizer = None
    if ckpt_path is not None:
        meta = load_checkpoint(ckpt_path)[CHECKPOINT_KEY]
        tokenizer = tokenizer_from_files(meta["tokenizer_files"])  # the run keeps its tokenizer
        log.info("resume: continuing from %s", ckpt_path)
    tokenizer, prepared = prepare(cfg.data, cfg.tokenizer, tokenizer)
    model_cfg = resolve_model_config(cfg.model, tokenizer)
    if ckpt_path is not None:
        check_same_architecture(meta["model_config"], model_cfg, ckpt_path)
    block_size = cfg.data.block_size or model_cfg.block_size
    if block_size > model_cfg.block_size:
        raise ConfigError(f"data.block_size={block_size} exceeds the model's context model.block_size={model_cfg.block_size}")
    datamodule = CausalLMDataModule(
        prepared,
        block_size=block_size,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        eval_batches=cfg.trainer.eval_batches,
        num_workers=cfg.data.num_workers,
    )

    resolved = OmegaConf.to_container(raw_cfg, resolve=True) if raw_cfg is not None else dataclasses.asdict(cfg)
    task = CausalLMTask(
        model_config=dataclasses.asdict(model_cfg),
        task_config=dataclasses.asdict(cfg.task),
        max_steps=cfg.trainer.max_steps,
        compile=cfg.trainer.compile,
        tokenizer_files=tokenizer.to_files(),
        run_config=resolved,
    )
    params = task.model.num_params()
    logger = build_logger(cfg.logger, run_dir)
    trainer, parts = build_trainer(cfg.trainer, run_dir, logger)
    tokens_per_step = block_size * cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * trainer.world_size
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        tokenizer.save(run_dir / "tokenizer")
    log.info(
        "model: GPT %s parameters (%.2fM; %d layers, %d heads, %d wide, context %d, vocab %d) | tokenizer: %s | "
        "data: %s train / %s val tokens | %s tokens per step",
        f"{params:,}", params / 1e6, model_cfg.n_layer, model_cfg.n_head, model_cfg.n_embd, model_cfg.block_size,
        model_cfg.vocab_size, tokenizer, f"{prepared.num_tokens('train'):,}", f"{prepared.num_tokens('val'):,}",
        f"{tokens_per_step:,}",
    )

    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    last = run_dir / "checkpoints" / LAST
    trainer.save_checkpoint(last, weights_only=False)  # the final step, whether or not it coincided with a validation

    datamodule.eval_batches = cfg.trainer.final_eval_batches
    final = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
    val_loss = float(final["val/loss"])
    history: list = parts["history"].train
    summary = {
        "step": trainer.global_step,
        "train_loss": history[-1][1] if history else None,
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss),
        "val_eval_batches": cfg.trainer.final_eval_batches,  # null: the whole val split
        "best_val_loss": float(parts["best"].best_model_score) if parts["best"].best_model_score is not None else None,
        "tokens_per_s": parts["throughput"].tokens_per_s,
        "tokens_seen": trainer.global_step * tokens_per_step,
        "wall_s": time.perf_counter() - t_start,
        "params": params,
        "checkpoint": str(last.resolve()),
        "best_checkpoint": str(Path(parts["best"].best_model_path).resolve()) if parts["best"].best_model_path else None,
        "run_dir": str(run_dir.resolve()),
        "device": str(task.device),
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "tokenizer": tokenizer.identity(),
        "data": str(prepared.directory),
    }
    if trainer.is_global_zero:
        tmp = run_dir / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(run_dir / SUMMARY_FILE)
        parts["history"].plot(run_dir / "loss_curve.png", f"{cfg.name}: GPT {params / 1e6:.2f}M")
        log.info(
            "done: step %d | train loss %.4f | val loss %.4f (ppl %.2f) | %.0f tokens/s | %.1fs | %s",
            summary["step"], summary["train_loss"] or float("nan"), val_loss, summary["val_perplexity"],
            summary["tokens_per_s"], summary["wall_s"], last,
        )
    return summary


