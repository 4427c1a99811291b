"""What every training task shares: the plain model, AdamW + warmup/cosine, clipping with the norm logged, and a
checkpoint section that makes checkpoints self-contained and resumes exact (RNG states)."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import numpy as np
import torch

from gptframe.config import OptimizerSchedule
from gptframe.models.factory import build_model, model_config_from_dict
from gptframe.training.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_KEY
from gptframe.training.optim import decay_param_groups, loss_scaler
from gptframe.training.parallelize import parallelize


class WarmupCosine:
    """LR multiplier: linear warmup to 1, cosine decay to min_lr/lr at `decay_steps`, then flat (as nanoGPT)."""

    def __init__(self, warmup_steps: int, decay_steps: int, lr: float, min_lr: float):
        self.warmup_steps = warmup_steps
        self.decay_steps = max(decay_steps, warmup_steps + 1)
        self.min_ratio = min_lr / lr

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if step >= self.decay_steps:
            return self.min_ratio
        progress = (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps)
        return self.min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - self.min_ratio)


def _numpy_rng_state() -> tuple:
    """numpy's RNG state with its key array as a tensor, so checkpoints load with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


@dataclass
class TaskData:
    """What a task's data builder hands the run."""

    tokenizer: Any  # data_pipelines.tokenizers.Tokenizer
    model_config: Any  # the architecture's config, vocab size resolved
    datamodule: L.LightningDataModule
    tokens_per_example: int  # sequence length a batch row holds (throughput, global_batch_tokens)
    description: str  # the data, in a few words, for the log
    labels: list[str] | None = None  # label names by id, for tasks with a label set
    prepared: Any = None  # data_pipelines.prepare.PreparedData of a corpus-based task
    summary: dict | None = None  # what summary.json records about the data


class TrainingTask(L.LightningModule):
    """One task unit: its config schema (`config_class`), how it builds data (`build_data`), its steps, metrics and
    summary fields. Subclasses register by name in gptframe.tasks; the model comes from the architecture registry."""

    name: str
    config_class: type[OptimizerSchedule]
    monitor: tuple[str, str] = ("val/loss", "min")  # the metric that picks the best checkpoint
    epoch_based: bool = False  # trainer.max_epochs sets the steps (the datamodule has steps_per_epoch)
    lm_head_flops: bool = True  # the vocabulary projection runs per token (false: a per-sequence head)
    samples: str | None = None  # the W&B samples table of this task (gptframe.training.loggers.ModelSamples)
    # the task whose model this one trains (spec.models key): its own name unless it fine-tunes another task's model
    # (SFT trains the causal LM), which its checkpoints then load, generate and export as
    model_task: str

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "model_task" not in cls.__dict__ and "name" in cls.__dict__:
            cls.model_task = cls.name

    @classmethod
    def check_architecture(cls, spec) -> None:
        """Raises ValueError (a clear message) when the architecture cannot be trained for this task."""
        spec.model_class(cls.model_task)

    @classmethod
    def build_data(cls, cfg, tokenizer, model_config, labels: list[str] | None) -> TaskData:
        """Tokenizer, data module and resolved model config for a run. tokenizer / labels: from a resumed or
        initialising checkpoint (None: build them). Raises gptframe's user errors on bad input."""
        raise NotImplementedError

    @classmethod
    def summary_metrics(cls, final: dict[str, float]) -> dict:
        """summary.json fields from the final evaluation's metrics."""
        return {}

    def __init__(
        self,
        model_config: dict,
        task_config: dict,
        max_steps: int,
        compile: bool = False,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        tokenizer_files: dict[str, bytes] | None = None,
        labels: list[str] | None = None,
        run_config: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_files"])
        self.model_config = model_config_from_dict(model_config)
        self.task = self.config_class(**task_config)
        self.labels = labels
        self.model = build_model(self.model_task, self.model_config, num_labels=len(labels) if labels else None)
        self.max_steps = max_steps
        self.compile = compile
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward
        self.tokenizer_files = tokenizer_files or {}

    @property
    def has_unused_parameters(self) -> bool:
        """True when some weights get no gradient (DDP must then look for them every step)."""
        return False

    def configure_model(self) -> None:
        mesh = self.device_mesh  # set by ModelParallelStrategy (trainer.strategy=fsdp), else None
        bf16_mixed = self.trainer.precision == "bf16-mixed" if self._trainer is not None else False
        parallelize(
            self.model,
            compile=self.compile,
            activation_checkpointing=self.activation_checkpointing,
            data_parallel_mesh=mesh["data_parallel"] if mesh is not None else None,
            reshard_after_forward=self.reshard_after_forward,
            param_dtype=torch.bfloat16 if bf16_mixed else None,
        )

    def _logs_this_step(self) -> bool:
        """True on the steps Lightning writes to the logger. self.log costs about a millisecond a call, a few
        percent of a small model's step, so metrics are handed over only when they will be written."""
        return (self.trainer.global_step + 1) % self.trainer.log_every_n_steps == 0

    def _log_train(self, loss: torch.Tensor, **extra: torch.Tensor) -> None:
        if self._logs_this_step():
            self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # the mean over ranks: the global batch's loss
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
            for key, value in extra.items():
                self.log(f"train/{key}", value, sync_dist=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Clip ourselves to log the pre-clip total norm (Lightning's clipping does not return it).
        max_norm = gradient_clip_val if gradient_clip_val else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        if self._logs_this_step():
            # sharded (FSDP2) weights give a DTensor norm: the total over all shards
            self.log("train/grad_norm", norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def configure_optimizers(self):
        t = self.task
        optimizer = torch.optim.AdamW(
            decay_param_groups(self.model, t.weight_decay),
            lr=t.lr,
            betas=tuple(t.betas),
            eps=t.eps,
            # one kernel for all parameters, as the HF Trainer's default adamw_torch_fused: on CPU ~8 ms per step
            # for a 22M-parameter BERT against ~60 ms for torch's default per-tensor loop (RESULTS.md section 10).
            # Not under fp16's loss scaler: a fused step unscales the gradients itself, so Lightning would leave them
            # scaled for clipping and the non-finite check
            fused=self.device.type in ("cuda", "cpu") and loss_scaler(self._trainer) is None,
        )
        schedule = WarmupCosine(t.warmup_steps, t.lr_decay_steps or self.max_steps, t.lr, t.min_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "task": self.name,
            "model_task": self.model_task,  # what the weights are (loading builds this model)
            "model_config": asdict(self.model_config),
            "labels": self.labels,
            "tokenizer_files": self.tokenizer_files,
            # RNG states make a resumed run draw the same dropout masks as the uninterrupted one
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": _numpy_rng_state(),
                "python": random.getstate(),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get(CHECKPOINT_KEY, {}).get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            kind, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
            random.setstate(rng["python"])
