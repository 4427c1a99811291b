"""Structured configs: the typed schema of every group in `conf/`.

`conf/train.yaml` extends `train_schema`; polymorphic groups (`model`, `task`) name their schema in each option file
(`defaults: [gpt_schema]`). An unknown key or a wrong type therefore fails while Hydra composes the config, before any
work starts; value checks (`__post_init__`) run in `to_typed`, still before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from data_pipelines import RESOURCES
from data_pipelines.config import DataConfig, TokenizerConfig
from gptframe.errors import ConfigError
from gptframe.registry import architectures


@dataclass
class OptimizerSchedule:
    """AdamW with linear warmup then cosine decay to min_lr: the fields every task shares."""

    lr: float = 6e-4
    min_lr: float = 6e-5
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    lr_decay_steps: int | None = None  # None: trainer.max_steps (or the steps of trainer.max_epochs)

    def _check_optimizer(self) -> None:
        if not (0 <= self.min_lr <= self.lr < math.inf and self.lr > 0):  # written so that NaN fails too
            raise ValueError(f"need 0 <= task.min_lr <= task.lr and task.lr > 0, got lr={self.lr} min_lr={self.min_lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"task.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.warmup_steps < 0 or not 0 <= self.weight_decay < math.inf:
            raise ValueError("task.warmup_steps and task.weight_decay must be >= 0")
        if not 0 < self.eps < math.inf:
            raise ValueError(f"task.eps must be > 0, got {self.eps}")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise ValueError(f"task.lr_decay_steps must be >= 1, got {self.lr_decay_steps}")

    def _check_name(self, expected: str) -> None:
        if self.name != expected:  # type: ignore[attr-defined]
            raise ValueError(f"task.name must be {expected!r} for {type(self).__name__}, got {self.name!r}")  # type: ignore[attr-defined]


STRATEGIES = ("auto", "ddp", "fsdp")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64", "64-true")


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | gpu | cuda | mps
    # processes per node: an int, a list of GPU ids, or "auto" (what torchrun / srun started, else all GPUs or 1 CPU)
    devices: Any = "auto"
    num_nodes: Any = 1  # an int, or "auto": what torchrun / srun started
    strategy: str = "auto"  # auto (one device) | ddp | fsdp (FSDP2: fully_shard per block, then the root)
    precision: str = "auto"  # auto (bf16-mixed on bf16-capable GPUs, else 32) | 32 | bf16-mixed | 16-mixed | bf16-true
    activation_checkpointing: bool = False  # recompute each transformer block in backward: less memory, ~30% more compute
    fsdp_reshard_after_forward: bool = True  # FSDP: free gathered weights after forward (ZeRO-3); false: keep (ZeRO-2)
    max_steps: int = 2000  # optimizer steps
    max_epochs: int | None = None  # classification: train this many epochs (sets max_steps; validates every epoch)
    val_check_interval: int = 250  # optimizer steps between evaluations
    eval_batches: int | None = 20  # batches per periodic evaluation; None: the whole val split
    final_eval_batches: int | None = None  # batches of the evaluation after training; None: the whole val split
    accumulate_grad_batches: int = 1
    # tokens per optimizer step over all ranks; sets accumulate_grad_batches from the world size and micro-batch
    global_batch_tokens: int | None = None
    gradient_clip_val: float = 1.0  # max grad norm; 0 disables clipping
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int | None = None  # also keep a checkpoint every N steps
    # --- trust (issue 11): retention and numerical faults (gptframe/training/fault_tolerance.py) ---
    keep_last_checkpoints: int | None = 3  # periodic step*.ckpt kept (besides last and best); None: keep all
    nonfinite_policy: str = "stop"  # NaN/inf loss or grad norm: stop (the newest checkpoint stays the last good) | skip
    nonfinite_max_skips: int = 10  # skip: updates skipped over the run before it stops anyway
    # --- end trust ---
    # how long a rank waits for the others (connecting the group, a collective); None: torch's default (30 min).
    # A restarted job whose group cannot connect fails after it, and torchrun / SLURM restarts it again.
    process_group_timeout_s: int | None = None
    compile: bool = False  # torch.compile the model
    deterministic: bool = False
    enable_progress_bar: bool = True

    def __post_init__(self) -> None:
        positive = ("max_steps", "val_check_interval", "accumulate_grad_batches", "log_every_n_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_batches", "final_eval_batches", "checkpoint_every_n_steps", "max_epochs",
                     "global_batch_tokens", "keep_last_checkpoints", "process_group_timeout_s"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"trainer.{name} must be >= 1 or null, got {value}")
        if self.accelerator not in ACCELERATORS:  # trust (issue 11): Lightning's own error was a traceback
            raise ValueError(f"trainer.accelerator must be one of {'|'.join(ACCELERATORS)}, got {self.accelerator!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"trainer.strategy must be one of {'|'.join(STRATEGIES)}, got {self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be auto|32|bf16-mixed|16-mixed|bf16-true, got {self.precision!r}")
        if self.strategy == "fsdp" and self.precision in ("16-mixed", "64", "64-true"):
            # Lightning's ModelParallelStrategy has no loss scaler (fp16) and no fp64 path
            raise ValueError(
                f"trainer.precision={self.precision} is not supported with trainer=fsdp; use bf16-mixed, bf16-true "
                "or 32 (or trainer=ddp for 16-mixed)"
            )
        if self.nonfinite_policy not in ("stop", "skip") or self.nonfinite_max_skips < 0:  # trust (issue 11)
            raise ValueError(
                f"trainer.nonfinite_policy must be stop|skip and trainer.nonfinite_max_skips >= 0, got "
                f"{self.nonfinite_policy!r} and {self.nonfinite_max_skips}"
            )
        if self.gradient_clip_val < 0:
            raise ValueError(f"trainer.gradient_clip_val must be >= 0, got {self.gradient_clip_val}")
        if not (self.num_nodes == "auto" or (isinstance(self.num_nodes, int) and self.num_nodes >= 1)):
            raise ValueError(f"trainer.num_nodes must be an int >= 1 or 'auto', got {self.num_nodes!r}")
        devices_ok = (
            self.devices == "auto"
            or (isinstance(self.devices, int) and self.devices >= 1)
            or (isinstance(self.devices, list) and all(isinstance(d, int) for d in self.devices) and self.devices)
        )
        if not devices_ok:
            raise ValueError(f"trainer.devices must be an int >= 1, a list of device ids or 'auto', got {self.devices!r}")


@dataclass
class LoggerConfig:
    """Where metrics go: csv and tensorboard under <run dir>/logs; wandb under <run dir>/wandb (the rest is W&B's)."""

    kind: str = "csv"  # csv | tensorboard | wandb
    project: str = "gptframe"
    entity: str | None = None  # team or user; None: the API key's default entity
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None  # the W&B run's display name; None: the run's `name`
    mode: str = "auto"  # auto (online if an API key is configured, else offline) | online | offline | disabled
    log_samples: bool = True  # a table at each validation: GPT continuations of val prompts, BERT fill-mask
    num_samples: int = 4  # rows of that table
    sample_max_new_tokens: int = 32  # tokens generated per GPT sample

    def __post_init__(self) -> None:
        if self.kind not in ("csv", "tensorboard", "wandb"):
            raise ValueError(f"logger.kind must be csv|tensorboard|wandb, got {self.kind!r}")
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be auto|online|offline|disabled, got {self.mode!r}")
        if self.num_samples < 1 or self.sample_max_new_tokens < 1:
            raise ValueError(
                f"logger.num_samples and logger.sample_max_new_tokens must be >= 1, got {self.num_samples} and "
                f"{self.sample_max_new_tokens}"
            )


@dataclass
class TrainConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None  # a schema of the `model` group: an architecture's config + init_from (model_schemas())
    task: Any = None  # a schema of the `task` group: a task unit's config_class (gptframe.tasks)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    name: str = "default"  # run name; the run dir is outputs/<name> unless hydra.run.dir is set
    seed: int = 1337
    resume: str | None = "auto"  # auto: continue from <run dir>/checkpoints/last.ckpt if it exists | null | PATH


@dataclass
class GenerateConfig:
    ckpt: str = "???"  # a gptframe checkpoint (.ckpt), a gptframe export or a Hugging Face GPT-2 dir
    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float = 1.0
    do_sample: bool = True
    seed: int = 1337
    num_samples: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    stream: bool = True  # print tokens as they are produced (not with beam search, which ends all at once)
    chat: bool = False  # the prompt is a user message: the reply is the model's assistant turn (its chat template)
    system: str | None = None  # chat: an optional system message first
    # decoding strategies (gptframe.inference.decoding.GenerationSettings, transformers' generate semantics)
    num_beams: int = 1  # > 1: beam search (do_sample=false)
    length_penalty: float = 1.0
    early_stopping: bool = False
    repetition_penalty: float = 1.0  # > 1 discourages repeating tokens
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    eos_token_id: list[int] | None = None  # ids that end the text (default: the tokenizer's eos, in chat its end of turn)
    stop_strings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.num_samples < 1:
            raise ValueError("max_new_tokens must be >= 0 and num_samples >= 1")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0: no penalty), got {self.repetition_penalty}")
        if self.temperature <= 0 and self.do_sample:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or null, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def model_schemas() -> dict[str, type]:
    """`<arch>_schema` of the `model` group: each architecture's config plus where to initialise it from."""
    return {name: _model_schema(spec.config_class) for name, spec in architectures().items()}


_SCHEMAS: dict[type, type] = {}


def _model_schema(config_class: type) -> type:
    if config_class not in _SCHEMAS:
        name = config_class.__name__.removesuffix("Config") + "ModelConfig"  # GPTConfig -> GPTModelConfig
        # init_from: a gptframe checkpoint or a Hugging Face model dir: architecture, weights, tokenizer
        schema = make_dataclass(name, [("init_from", str | None, field(default=None))], bases=(config_class,))
        # a module attribute, so pickles (submitit jobs, Lightning hparams) find the class by name
        schema.__module__ = __name__
        globals()[name] = schema
        _SCHEMAS[config_class] = schema
    return _SCHEMAS[config_class]


def split_model_schema(schema) -> tuple[Any, str | None]:
    """(the plain model config, init_from): the model never sees how it is initialised."""
    plain_class = next(c for c in type(schema).__mro__[1:] if c in _SCHEMAS)
    values = {f.name: getattr(schema, f.name) for f in fields(schema) if f.name != "init_from"}
    return plain_class(**values), schema.init_from


def register_configs() -> None:
    from gptframe.tasks import TASKS

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, schema in model_schemas().items():
        cs.store(group="model", name=f"{name}_schema", node=schema)
    for name, task in TASKS.items():
        cs.store(group="task", name=f"{name}_schema", node=task.config_class)
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", lambda name: str(RESOURCES / name))


def to_typed(cfg: DictConfig) -> TrainConfig:
    """The composed config as dataclass objects, with every value check run. Raises ConfigError."""
    from gptframe.tasks import TASKS

    try:
        typed = OmegaConf.to_object(cfg)
    except Exception as e:  # ValueError from __post_init__, or omegaconf's missing/validation errors
        raise ConfigError(f"invalid config: {_describe(e)}") from None
    if not isinstance(typed.model, tuple(model_schemas().values())):
        raise ConfigError(
            "model: pick a model config (e.g. model=gpt_nano, model=llama_micro or model=bert_mini); it must extend a "
            "model schema"
        )
    if not isinstance(typed.task, tuple(t.config_class for t in TASKS.values())):
        raise ConfigError(f"task: pick a task config (task={' | '.join(TASKS)})")
    return typed


def _describe(e: Exception) -> str:
    msg = str(e).strip()
    # omegaconf errors carry several lines of context; the first names the problem and the key
    full_key = getattr(e, "full_key", None)
    first = msg.splitlines()[0] if msg else type(e).__name__
    return f"{first} (key: {full_key})" if full_key and full_key not in first else first


model_schemas()  # defined at import: a pickled config's class is found by name in a fresh process
