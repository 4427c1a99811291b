"""Experiment tracking: the Lightning logger for `logger.kind` (csv, tensorboard, wandb).

W&B specifics live here too: online or offline mode, the run id kept in the run dir (so a resumed or requeued job
continues the same W&B run), the resolved config with secrets scrubbed, and a table of model samples at each
validation (GPT continuations, BERT fill-mask predictions).
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import netrc
import os
import re
import secrets
import string
import uuid
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.logger import _convert_params
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from gptframe.config import LoggerConfig
from gptframe.errors import ConfigError

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
SCRUBBED = "***"
# key names that hold credentials: api_key, hf_token, client_secret, db_password, ... (not "tokenizer", "max_tokens")
SECRET_KEY = re.compile(
    r"(^|[_.-])(api[_-]?key|apikey|access[_-]?key|private[_-]?key|secret([_-]?key)?|token|password|passwd|"
    r"credentials?)$",
    re.IGNORECASE,
)
RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def build_logger(cfg: LoggerConfig, run_dir: Path, run_name: str = "default", config: dict | None = None) -> Logger:
    """The logger for `cfg.kind`. csv and tensorboard write <run dir>/logs/version_N (one version per invocation);
    wandb writes <run dir>/wandb and logs `config` (the resolved run config) with secrets scrubbed."""
    run_dir = Path(run_dir)
    if cfg.kind == "csv":
        return CSVLogger(save_dir=run_dir, name="logs")
    if cfg.kind == "tensorboard":
        return TensorBoardLogger(save_dir=run_dir, name="logs", default_hp_metric=False)
    mode, why = resolve_wandb_mode(cfg.mode)
    run_id = wandb_run_id(run_dir)
    if mode == "offline":
        log.info("wandb: offline (%s); sync later with: wandb sync %s/wandb/offline-run-*", why, run_dir)
    else:
        log.info("wandb: %s (%s), run id %s", mode, why, run_id)
    return GptframeWandbLogger(
        name=cfg.name or run_name,
        save_dir=str(run_dir),
        id=run_id,  # with resume="allow" (Lightning's default): continue this run if it exists, else create it
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=list(cfg.tags),
        mode=mode,
        config=scrub_secrets(config or {}),
    )


def logger_callbacks(cfg: LoggerConfig, logger: Logger | None, task, seed: int) -> list[L.Callback]:
    """What the logger adds to the Trainer: the W&B samples table of the tasks that have one (`task.samples`)."""
    wandb_on = isinstance(logger, WandbLogger) and cfg.mode != "disabled"
    if wandb_on and cfg.log_samples and task.samples is not None:
        return [ModelSamples(logger, cfg.num_samples, cfg.sample_max_new_tokens, seed)]
    return []


def finish_logger(logger: Logger | None, summary: dict | None = None) -> None:
    """End the W&B run of a completed training run (final metrics into its summary); other loggers need nothing."""
    if isinstance(logger, GptframeWandbLogger):
        logger.finish(summary)


class GptframeWandbLogger(WandbLogger):
    """Lightning's WandbLogger with secrets scrubbed from every hyperparameter, and the run ended when training fails
    (so a later run in the same process never attaches to it)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Lightning always passes `anonymous` (None here) to wandb.init, which warns that the setting is obsolete
        getattr(self, "_wandb_init", {}).pop("anonymous", None)

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        params = dict(_convert_params(params))
        params.pop("run_config", None)  # the task's copy of the run config: already the W&B config, from init
        super().log_hyperparams(scrub_secrets(params))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "failed" and self._experiment is not None:
            self._experiment.finish(exit_code=1)

    @rank_zero_only
    def finish(self, summary: dict | None = None) -> None:
        if self._experiment is None:
            return
        final = {f"final/{k}": v for k, v in (summary or {}).items() if isinstance(v, (int, float))}
        if final:
            self._experiment.summary.update(final)
        self._experiment.finish()


def resolve_wandb_mode(mode: str, env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(online | offline | disabled, why). auto: WANDB_MODE if set, else online iff an API key is configured."""
    if mode != "auto":
        return mode, f"logger.mode={mode}"
    env_mode = env.get("WANDB_MODE", "").strip().lower()
    named = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
    if env_mode in named:
        return named[env_mode], f"WANDB_MODE={env_mode}"
    source = wandb_credentials_source(env)
    if source:
        return "online", f"API key from {source}"
    return "offline", "no W&B API key configured"


def wandb_credentials_source(env: Mapping[str, str] = os.environ) -> str | None:
    """Where W&B would find credentials (the places wandb.init looks: env, ~/.netrc for the W&B host, wandb's
    settings file), or None. Says where, never what."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if env.get(var):
            return var
    home = Path(env.get("HOME") or Path.home())
    settings = _wandb_settings(env, home)
    host = urlsplit(env.get("WANDB_BASE_URL") or settings.get("base_url") or DEFAULT_WANDB_HOST).netloc
    netrc_paths = [Path(env["NETRC"]).expanduser()] if env.get("NETRC") else [home / ".netrc", home / "_netrc"]
    for path in netrc_paths:
        try:
            entry = netrc.netrc(path).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            continue
        if entry and entry[2]:
            return str(path)
    if settings.get("api_key"):
        return "the wandb settings file"
    return None


def _wandb_settings(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """The [default] section of wandb's global settings file (~/.config/wandb/settings or WANDB_CONFIG_DIR)."""
    config_dir = Path(env["WANDB_CONFIG_DIR"]) if env.get("WANDB_CONFIG_DIR") else home / ".config" / "wandb"
    parser = configparser.ConfigParser()
    try:
        parser.read(config_dir / "settings")
    except configparser.Error:
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run dir, created by the first process that asks and read back by every other rank and
    every later job in the same dir (resume=auto, a SLURM requeue), so all of them log to one W&B run.

    Race-free without locks: the id is written to a private temporary file, then hard-linked to its final name,
    which fails if another process published first; every process then reads whatever was published."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_ID_FILE
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        new_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        tmp = run_dir / f".{RUN_ID_FILE}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            f.write(new_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another rank (or job) published its id first: use that one
        finally:
            tmp.unlink()
    run_id = path.read_text().strip()
    if not RUN_ID.match(run_id):
        raise ConfigError(
            f"{path} does not hold a W&B run id (letters, digits, '-' or '_'), got {run_id[:80]!r}; delete the file "
            "to start a new W&B run for this run dir"
        )
    return run_id


def scrub_secrets(value, known: tuple[str, ...] | None = None):
    """A copy of a config with the value of every secret-looking key (api_key, token, secret, password, ...)
    replaced by '***', and any string holding a configured W&B API key scrubbed as well."""
    if known is None:
        known = tuple(v for v in (os.environ.get("WANDB_API_KEY"),) if v)
    if isinstance(value, Mapping):
        return {
            k: SCRUBBED if isinstance(k, str) and SECRET_KEY.search(k) and v is not None else scrub_secrets(v, known)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub_secrets(v, known) for v in value]
    if isinstance(value, str) and any(secret in value for secret in known):
        return SCRUBBED
    return value


class ModelSamples(L.Callback):
    """At each validation during fit, a W&B table of what the model does now, from the validation split: GPT
    continues a few prompts (seeded sampling, KV cache); BERT fills a [MASK] in a few passages (the top 5, one column
    each). Runs the inference pipelines on the model being trained, in eval mode and without torch.compile (the
    changing shapes of generation would only trigger recompilation), on rank 0 with its own RNG: training draws the
    same random numbers with or without it. Sharded (FSDP) weights live on every rank, and a forward pass on rank 0
    alone would wait forever for the others: those runs log no samples."""

    PROMPT_TOKENS = 16  # GPT: prompt length
    SENTENCE_TOKENS = 32  # BERT: the window a word is masked in
    TOP_K = 5
    TEMPERATURE = 0.8

    def __init__(self, logger: WandbLogger, num_samples: int, max_new_tokens: int, seed: int):
        self.logger = logger
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self._tokenizer = None
        self._told_sharded = False

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or not trainer.is_global_zero:
            return
        model = pl_module.model
        if _is_sharded(model):
            if not self._told_sharded:
                log.info("wandb: no samples table for a sharded (FSDP) model")
                self._told_sharded = True
            return
        from data_pipelines.tokenizers import tokenizer_from_files
        from gptframe.loading import LoadedModel

        if self._tokenizer is None:
            self._tokenizer = tokenizer_from_files(pl_module.tokenizer_files)
        loaded = LoadedModel(model, self._tokenizer, pl_module.model_task, pl_module.model_config)
        was_training = model.training
        model.eval()
        try:
            with _eager():
                # the task names its table: _generations (decoders' continuations), _fill_mask (masked LMs) or
                # _chat (answers to val conversations)
                columns, rows = getattr(self, f"_{pl_module.samples}")(loaded, trainer.datamodule)
        finally:
            model.train(was_training)
        if rows:
            step = trainer.global_step
            key = f"samples/{pl_module.samples}"
            self.logger.log_table(key, columns=["step", *columns], data=[[step, *r] for r in rows], step=step)

    def _windows(self, tokens: np.ndarray, length: int, special: set[int]) -> list[list[int]]:
        """`num_samples` windows of `length` tokens spread evenly over the split, special tokens left out."""
        starts = np.linspace(0, max(0, len(tokens) - length), self.num_samples).astype(int)
        return [[int(t) for t in tokens[s : s + length] if int(t) not in special] for s in sorted(set(starts))]

    def _generations(self, loaded, datamodule) -> tuple[list[str], list[list[str]]]:
        from gptframe.inference.pipelines import TextGenerationPipeline

        if getattr(datamodule, "prepared", None) is None:
            return [], []
        tokens = datamodule.prepared.tokens("val")
        tokenizer = loaded.tokenizer
        length = max(1, min(self.PROMPT_TOKENS, loaded.config.block_size // 2))
        prompts = [tokenizer.decode(ids) for ids in self._windows(tokens, length, set(tokenizer.special_ids.values()))]
        outputs = TextGenerationPipeline(loaded)(
            prompts, max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.TEMPERATURE,
            top_k=50, seed=self.seed, return_full_text=False,
        )
        return ["prompt", "continuation"], [[p, out[0]["generated_text"]] for p, out in zip(prompts, outputs, strict=True)]

    def _fill_mask(self, loaded, datamodule) -> tuple[list[str], list[list[str]]]:
        from gptframe.inference.pipelines import FillMaskPipeline

        tokenizer = loaded.tokenizer
        if tokenizer.mask_id is None or getattr(datamodule, "prepared", None) is None:
            return [], []
        tokens = datamodule.prepared.tokens("val")
        pipe = FillMaskPipeline(loaded)
        mask = tokenizer.decode([tokenizer.mask_id])
        length = max(4, min(self.SENTENCE_TOKENS, loaded.config.max_position_embeddings - 2))
        rows = []
        for ids in self._windows(tokens, length, set(tokenizer.special_ids.values())):
            masked = _mask_middle_word(tokenizer.decode(ids), mask)
            if masked is None:
                continue
            text, answer = masked
            try:
                candidates = pipe(text, top_k=self.TOP_K)
            except ValueError:  # the mask did not survive tokenization as one [MASK] token
                continue
            if not candidates or isinstance(candidates[0], list):  # one list per mask: the text held another
                continue
            rows.append([text, answer, *(f"{c['token_str']} ({c['score']:.2f})" for c in candidates)])
        return ["text", "answer", *(f"prediction_{i + 1}" for i in range(self.TOP_K))], rows


    def _chat(self, loaded, datamodule) -> tuple[list[str], list[list[str]]]:
        rows = _chat_answers(loaded, getattr(datamodule, "sample_conversations", None) or [], self.max_new_tokens)
        return ["prompt", "answer"], [list(r) for r in rows]


def _chat_answers(loaded, conversations: list, max_new_tokens: int) -> list[tuple[str, str]]:
    """(last user message, greedy reply) per conversation, generated as gptframe.pipeline's chat generates."""
    from gptframe.inference.chat import chat_replies
    from gptframe.inference.decoding import GenerationSettings

    if not conversations:
        return []
    replies = chat_replies(loaded.model, loaded.tokenizer, conversations, GenerationSettings(max_new_tokens=max_new_tokens))
    return [(c[-1]["content"], r[0]) for c, r in zip(conversations, replies, strict=True)]


def chat_samples(pl_module, datamodule, max_new_tokens: int) -> list[tuple[str, str]]:
    """A training task's answers to its datamodule's `sample_conversations` (greedy, eval mode, eager), for the log.
    Empty for a sharded (FSDP) model: a forward pass on one rank alone would wait for the others."""
    from data_pipelines.tokenizers import tokenizer_from_files
    from gptframe.loading import LoadedModel

    model = pl_module.model
    if _is_sharded(model):
        return []
    tokenizer = tokenizer_from_files(pl_module.tokenizer_files)
    loaded = LoadedModel(model, tokenizer, pl_module.model_task, pl_module.model_config)
    was_training = model.training
    model.eval()
    try:
        with _eager(), torch.no_grad():
            return _chat_answers(loaded, getattr(datamodule, "sample_conversations", None) or [], max_new_tokens)
    finally:
        model.train(was_training)


def _mask_middle_word(text: str, mask: str) -> tuple[str, str] | None:
    """(text with its middle word replaced by the mask token, that word); the first and last words, likely cut
    by the window, are dropped. None if no word is left."""
    words = text.split()[1:-1]
    candidates = [i for i, w in enumerate(words) if re.search(r"\w", w)]
    if not candidates:
        return None
    i = min(candidates, key=lambda j: abs(j - len(words) // 2))
    word = re.search(r"\w+", words[i])
    words[i] = words[i][: word.start()] + mask + words[i][word.end() :]
    return " ".join(words), word.group()


def _eager():
    """Run compiled modules eagerly (torch >= 2.6; before that generation still works, recompiling as it goes)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _is_sharded(model: torch.nn.Module) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
