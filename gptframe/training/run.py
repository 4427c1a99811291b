"""One training run, start to finish: resume or init_from, tokenizer + data, model, fit, final evaluation, summary.

The same flow serves every task; what differs (the data module, the metrics in the summary) is looked up by task.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from data_pipelines.classification import EncodedExamples, encode_examples, label_ids, label_names, read_labeled
from data_pipelines.datamodule import CausalLMDataModule, ClassificationDataModule, MaskedLMDataModule
from data_pipelines.mlm import MaskedLMExamples, MaskingConfig, SeqLenWarmup, SpecialIds, word_continuation_table
from data_pipelines.prepare import build_tokenizer, prepare_sources
from data_pipelines.sources import open_corpus
from data_pipelines.tokenizers import Tokenizer, tokenizer_from_files
from gptframe.config import TrainConfig, split_model_schema
from gptframe.errors import CheckpointError, ConfigError, DataError, TokenizerError
from gptframe.models.bert import BertConfig
from gptframe.models.factory import model_class, model_config_from_dict, transfer_weights
from gptframe.models.gpt import GPTConfig
from gptframe.tasks import TASKS
from gptframe.training.checkpoints import CHECKPOINT_KEY, LAST, LoadedModel, read_checkpoint_meta
from gptframe.training.loggers import build_logger, finish_logger, logger_callbacks, scrub_secrets
from gptframe.training.trainer import build_trainer, resolve_topology, world_size

log = logging.getLogger("gptframe")

SUMMARY_FILE = "summary.json"
ModelConfig = GPTConfig | BertConfig


def resume_candidates(run_dir: Path) -> list[Path]:
    """Checkpoints a run can continue from: last.ckpt, the periodic stepNNNNNN.ckpt, and the hpc_ckpt_N.ckpt saved
    on SLURM's requeue signal (files, or directories when sharded). Not best-*.ckpt: an earlier step by design."""
    ckpt_dir = run_dir / "checkpoints"
    globbed = [*sorted(ckpt_dir.glob("step*.ckpt")), *sorted(ckpt_dir.glob("hpc_ckpt_*.ckpt"))]
    return [p for p in [ckpt_dir / LAST, *globbed] if p.exists()]


def _checkpoint_step(path: Path) -> int | None:
    """The optimizer step a checkpoint was saved at; None if it cannot be read (e.g. a save cut short)."""
    try:
        return int(read_checkpoint_meta(path).get("global_step", 0))
    except CheckpointError as e:
        log.warning("resume: skipping %s: %s", path, e)
        return None


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: auto -> the most advanced of the run dir's checkpoints (last.ckpt, or a
    requeue checkpoint saved after it), none if there are none; null -> none; else PATH."""
    candidates = resume_candidates(run_dir)
    if resume is None or str(resume).lower() in ("null", "none", "false"):
        if candidates:
            raise ConfigError(
                f"{run_dir} already holds checkpoints; pass resume=auto to continue that run, "
                "or pick another name=... / hydra.run.dir=... for a fresh one"
            )
        return None
    if resume == "auto":
        readable = [(step, p.stat().st_mtime, p) for p in candidates if (step := _checkpoint_step(p)) is not None]
        if not readable:
            if candidates:
                raise CheckpointError(
                    f"none of the checkpoints in {run_dir / 'checkpoints'} can be read; pass resume=PATH to pick one, "
                    "or use a fresh run dir"
                )
            return None
        # the highest step wins; on a tie the later-saved (a requeue checkpoint written after last.ckpt)
        return max(readable)[2]
    return Path(resume).expanduser()


def resolve_model_config(model: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
    """Vocab size from the tokenizer, padded up to `pad_vocab_size_multiple`; an explicit size must fit it."""
    multiple = model.pad_vocab_size_multiple
    padded = -(-tokenizer.vocab_size // multiple) * multiple
    if model.vocab_size is not None:
        if model.vocab_size < tokenizer.vocab_size:
            raise TokenizerError(
                f"the {tokenizer.kind} tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size={model.vocab_size}"
                " (the model's vocabulary); use the tokenizer the model was trained with, or model.vocab_size=null "
                "(sized from the tokenizer)"
            )
        padded = model.vocab_size
    return dataclasses.replace(model, vocab_size=padded)


def check_same_architecture(ckpt_model: dict, model: ModelConfig, ckpt_path: Path) -> None:
    current = dataclasses.asdict(model)
    # dropout may change on resume; everything that shapes the weights may not
    dropout = ("dropout", "hidden_dropout_prob", "attention_probs_dropout_prob")
    diffs = {k: (ckpt_model.get(k), v) for k, v in current.items() if k not in dropout and ckpt_model.get(k) != v}
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
    model_config: ModelConfig | None = None
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
        from gptframe.loading import load_model

        init = load_model(init_from)
        log.info("init_from: %s (%s %s model)", init_from, init.arch.upper(), init.task)
        return Source(init.tokenizer, init.config, init=init, init_from=str(init_from))
    return Source(model_config=model_cfg)


def build_classification_data(cfg: TrainConfig, source: Source, arch: str, max_len: int):
    data = cfg.data
    if not data.train_path or not data.val_path:
        raise ConfigError("task=classification needs data.train_path and data.val_path (CSV, TSV or JSONL files)")
    pair_column = data.text_pair_column or None
    train = read_labeled(data.train_path, data.text_column, pair_column, data.label_column)
    val = read_labeled(data.val_path, data.text_column, pair_column, data.label_column)
    names = source.labels or label_names(train.labels)
    if len(names) < 2:
        raise DataError(f"{train.path}: a classifier needs at least 2 distinct labels, found {names}")
    train_y, val_y = label_ids(train, names), label_ids(val, names)
    tokenizer = source.tokenizer
    if tokenizer is None:
        tokenizer = _tokenizer_for_labeled_data(cfg)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    encoded = {}
    for split, examples, y in (("train", train, train_y), ("val", val, val_y)):
        ids, types = encode_examples(tokenizer, examples.texts, examples.pairs, max_len, arch)
        encoded[split] = EncodedExamples(ids, types, y, pad)
    datamodule = ClassificationDataModule(encoded["train"], encoded["val"], data.batch_size, cfg.seed, data.num_workers)
    log.info("data: %d train / %d val examples, %d labels: %s", len(train.texts), len(val.texts), len(names), names)
    return tokenizer, datamodule, names


def _tokenizer_for_labeled_data(cfg: TrainConfig) -> Tokenizer:
    """Training from scratch: tokenizer.path, or a tokenizer trained on the training file's texts."""
    import os

    corpus = open_corpus(cfg.data.train_path, "auto", cfg.data.text_column)
    splits = corpus.split(cfg.data.val_fraction, cfg.data.split_seed)
    cache_dir = Path(os.path.expanduser(cfg.data.cache_dir)).resolve()
    settings = {"val_fraction": cfg.data.val_fraction, "seed": cfg.data.split_seed}
    return build_tokenizer(cfg.tokenizer, corpus, splits, cache_dir, settings)


def build_lm_data(cfg: TrainConfig, tokenizer: Tokenizer | None, model_cfg: ModelConfig):
    tokenizer, sources = prepare_sources(cfg.data, cfg.tokenizer, tokenizer)
    prepared = sources[0].data  # a mixture's first source: what the log line and the summary's "data" name
    model_cfg = resolve_model_config(model_cfg, tokenizer)
    if cfg.task.name == "clm":
        block_size = cfg.data.block_size or model_cfg.block_size
        if block_size > model_cfg.block_size:
            raise ConfigError(
                f"data.block_size={block_size} exceeds the model's context model.block_size={model_cfg.block_size}"
            )
        datamodule = CausalLMDataModule(
            sources, block_size=block_size, batch_size=cfg.data.batch_size, seed=cfg.seed,
            eval_batches=cfg.trainer.eval_batches, num_workers=cfg.data.num_workers,
        )
        return tokenizer, model_cfg, datamodule, prepared, block_size
    if len(sources) > 1:
        raise ConfigError(f"data.sources: task={cfg.task.name} reads one corpus; mixtures are for task=clm")
    t = cfg.task
    max_seq_len = t.max_seq_len or model_cfg.max_position_embeddings
    if max_seq_len > model_cfg.max_position_embeddings:
        raise ConfigError(
            f"task.max_seq_len={max_seq_len} exceeds model.max_position_embeddings={model_cfg.max_position_embeddings}"
        )
    if t.seq_len_warmup_steps and t.seq_len_warmup_start > max_seq_len:
        raise ConfigError(
            f"task.seq_len_warmup_start={t.seq_len_warmup_start} exceeds the example length {max_seq_len} "
            "(task.max_seq_len, or the model's max_position_embeddings)"
        )
    warmup = SeqLenWarmup(t.seq_len_warmup_start, max_seq_len, t.seq_len_warmup_steps) if t.seq_len_warmup_steps else None
    special = SpecialIds.of(tokenizer)
    masking = MaskingConfig(t.mask_prob, t.mask_token_prob, t.random_token_prob, t.whole_word_masking)
    continuation = word_continuation_table(tokenizer) if t.whole_word_masking else None
    examples = {
        split: MaskedLMExamples(
            prepared.tokens(split), special, max_seq_len, masking, t.nsp, t.short_seq_prob,
            cfg.seed if split == "train" else cfg.seed + 1, continuation,
            seq_len_warmup=warmup if split == "train" else None,  # validation always at full length
        )
        for split in ("train", "val")
    }
    datamodule = MaskedLMDataModule(
        prepared, examples, cfg.data.batch_size, cfg.seed, max_seq_len, cfg.trainer.eval_batches, cfg.data.num_workers
    )
    return tokenizer, model_cfg, datamodule, prepared, max_seq_len


def run_training(cfg: TrainConfig, run_dir: Path, raw_cfg: DictConfig | None = None) -> dict:
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task_name = cfg.task.name

    # Everything that can reject the input runs before anything is written to the run dir.
    ckpt_path = resolve_resume(cfg.resume, run_dir)
    source = resolve_source(cfg, ckpt_path)
    try:
        model_class(task_name, source.model_config.arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    labels = None
    prepared = None
    if task_name == "classification":
        model_cfg = source.model_config
        context = model_cfg.block_size if model_cfg.arch == "gpt" else model_cfg.max_position_embeddings
        max_len = min(cfg.task.max_seq_len or context, context)
        tokenizer, datamodule, labels = build_classification_data(cfg, source, model_cfg.arch, max_len)
        model_cfg = resolve_model_config(model_cfg, tokenizer)
        tokens_per_example = max_len
    else:
        tokenizer, model_cfg, datamodule, prepared, tokens_per_example = build_lm_data(
            cfg, source.tokenizer, source.model_config
        )
    if source.resume_meta is not None:
        check_same_architecture(source.resume_meta["model_config"], model_cfg, ckpt_path)

    trainer_cfg = resolve_topology(cfg.trainer)
    world = world_size(trainer_cfg)
    log.info(
        "topology: strategy %s, %d node(s) x %s process(es) per node = world size %d",
        trainer_cfg.strategy, trainer_cfg.num_nodes, trainer_cfg.devices, world,
    )
    if trainer_cfg.global_batch_tokens:
        trainer_cfg = _accumulation_for(trainer_cfg, tokens_per_example * cfg.data.batch_size * world)
    if task_name == "classification" and trainer_cfg.max_epochs:
        per_epoch = datamodule.steps_per_epoch(world, trainer_cfg.accumulate_grad_batches)
        trainer_cfg = dataclasses.replace(
            trainer_cfg, max_steps=trainer_cfg.max_epochs * per_epoch, val_check_interval=per_epoch
        )
        log.info("schedule: %d epochs x %d steps = %d steps", trainer_cfg.max_epochs, per_epoch, trainer_cfg.max_steps)

    resolved = OmegaConf.to_container(raw_cfg, resolve=True) if raw_cfg is not None else dataclasses.asdict(cfg)
    resolved = scrub_secrets(resolved)  # what config.yaml, checkpoints and loggers keep: no API keys or passwords
    task_cls = TASKS[task_name]
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
        copied = transfer_weights(source.init.model, task.model)
        log.info("init_from: copied %s", copied)
    params = task.model.num_params()
    logger = build_logger(cfg.logger, run_dir, cfg.name, resolved)
    trainer, parts = build_trainer(
        trainer_cfg, run_dir, logger, monitor=task_cls.monitor, find_unused_parameters=task.has_unused_parameters,
        extra_callbacks=logger_callbacks(cfg.logger, logger, task_name, cfg.seed),
    )
    tokens_per_step = tokens_per_example * cfg.data.batch_size * trainer_cfg.accumulate_grad_batches * trainer.world_size
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        tokenizer.save(run_dir / "tokenizer")
    log.info(
        "model: %s %s parameters (%.2fM) %s | task: %s | tokenizer: %s | data: %s",
        model_cfg.arch.upper(), f"{params:,}", params / 1e6, _describe_model(model_cfg), task_name, tokenizer,
        _describe_data(prepared, datamodule),
    )

    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    last = run_dir / "checkpoints" / LAST
    trainer.save_checkpoint(last, weights_only=False)  # the final step, whether or not it coincided with a validation

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
        **_task_metrics(task_name, final),
        **{k.replace("/", "_"): v for k, v in final.items() if k.startswith("val/loss_")},  # per source
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
        "data": str(prepared.directory) if prepared is not None else [cfg.data.train_path, cfg.data.val_path],
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


def _task_metrics(task: str, final: dict[str, float]) -> dict:
    if task == "classification":
        return {"val_accuracy": final["val/accuracy"], "val_f1": final["val/f1"]}
    metrics = {"val_perplexity": math.exp(final["val/mlm_loss" if task == "mlm" else "val/loss"])}
    if task == "mlm":
        metrics["val_mlm_loss"] = final["val/mlm_loss"]
        metrics["val_mlm_accuracy"] = final["val/mlm_accuracy"]
        if "val/nsp_accuracy" in final:
            metrics["val_nsp_accuracy"] = final["val/nsp_accuracy"]
    return metrics


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


def _describe_model(c: ModelConfig) -> str:
    if c.arch == "gpt":
        return f"({c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, context {c.block_size}, vocab {c.vocab_size})"
    return (f"({c.num_hidden_layers} layers, {c.num_attention_heads} heads, {c.hidden_size} wide, "
            f"{c.max_position_embeddings} positions, vocab {c.vocab_size})")


def _describe_data(prepared, datamodule) -> str:
    if prepared is None:
        return f"{len(datamodule.train)} train / {len(datamodule.val)} val examples"
    return f"{prepared.num_tokens('train'):,} train / {prepared.num_tokens('val'):,} val tokens"
