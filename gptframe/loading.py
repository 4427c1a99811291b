"""The one way to load a model: from a gptframe checkpoint (a `.ckpt` file or a sharded directory), a gptframe export,
or a Hugging Face model directory of any registered architecture. Training (`model.init_from`, resume), generation,
the pipelines and export all come through here.

Importing a Hugging Face directory needs no `transformers`: config.json is read as JSON, the weights with safetensors
(or torch.load(weights_only=True)), and the architecture's HF adapter maps both.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from data_pipelines.tokenizers import Tokenizer, load_hf_tokenizer, tokenizer_from_files
from gptframe.errors import CheckpointError, TokenizerError
from gptframe.models.factory import build_model, model_config_from_dict
from gptframe.registry import ArchitectureSpec, architecture_of, architectures
from gptframe.training.checkpoints import CHECKPOINT_KEY, MODEL_PREFIX, SHARDED_META_FILE, load_checkpoint
from gptframe.training.safe_loading import safe_torch_load

log = logging.getLogger(__name__)

GPTFRAME_FILE = "gptframe.json"  # what an export adds for gptframe: task, arch, labels, the exact model config


@dataclass
class LoadedModel:
    """A plain model (eval mode) with everything needed to use it."""

    model: nn.Module
    tokenizer: Tokenizer
    task: str  # the task unit it was trained for: clm | mlm | classification | ...
    config: object  # the architecture's config dataclass
    labels: list[str] | None = None  # label names by id, for tasks with labels

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def spec(self) -> ArchitectureSpec:
        return architecture_of(self.config)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The plain model (eval mode), its tokenizer, task and labels, from a `.ckpt` file or a model directory."""
    path = Path(path).expanduser()
    if path.is_dir() and not (path / SHARDED_META_FILE).is_file():
        loaded = load_hf_directory(path)
        loaded.model.to(device).eval()
        return loaded
    if not path.exists():
        raise CheckpointError(
            f"checkpoint not found: {path} (expected a gptframe .ckpt file, a gptframe export or a Hugging Face model dir)"
        )
    return model_from_checkpoint(path, device)


def require_task(loaded: LoadedModel, task: str, what: str, path: str | Path, causal: bool | None = None) -> None:
    """A clear error when a model cannot do what it is asked (e.g. generate text with a classifier)."""
    if loaded.task != task or (causal is not None and loaded.spec.causal != causal):
        kind = {True: "decoder ", False: "encoder ", None: ""}[causal]
        raise CheckpointError(
            f"{what} needs a {kind}model trained for task={task}, but {path} holds a {loaded.arch.upper()} "
            f"{loaded.task} model"
        )


def takes_labels(model_class: type[nn.Module]) -> bool:
    """Task models with a label set take `num_labels`."""
    return "num_labels" in inspect.signature(model_class).parameters


# ---------------------------------------------------------------------------------------------------------------------
# gptframe checkpoints


def model_state_dict(ckpt: dict) -> dict[str, torch.Tensor]:
    """The plain model's weights from a Lightning state dict (compiled models saved `_orig_mod.` names)."""
    state = {}
    for key, value in ckpt["state_dict"].items():
        if key.startswith(MODEL_PREFIX):
            state[key[len(MODEL_PREFIX) :].replace("_orig_mod.", "")] = value
    return state


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    ckpt = load_checkpoint(path)
    meta = ckpt[CHECKPOINT_KEY]
    try:
        config = model_config_from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: its model config is invalid: {e}") from None
    labels = meta["labels"]
    task = meta.get("model_task", meta["task"])  # a task that trains another task's model (SFT: the causal LM)
    model = build_model(task, config, num_labels=len(labels) if labels else None)
    try:
        model.load_state_dict(model_state_dict(ckpt))
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"checkpoint {path}: weights do not match its model config: {' '.join(first[:3])}") from None
    tokenizer = tokenizer_from_files(meta["tokenizer_files"])
    return LoadedModel(model.to(device).eval(), tokenizer, task, config, labels)


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face directories (gptframe exports included)


def hf_imports() -> dict[str, tuple[ArchitectureSpec, str]]:
    """transformers class -> (architecture, task), over every registered architecture."""
    return {cls: (spec, task) for spec in architectures().values() for cls, task in spec.hf.imports.items()}


def load_hf_directory(path: str | Path) -> LoadedModel:
    """A gptframe export or a transformers model directory as a gptframe model (eval mode) and tokenizer."""
    path = Path(path).expanduser()
    imports = hf_imports()
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is not a model directory: no config.json (expected a gptframe export, a Hugging Face model dir "
            f"of {', '.join(imports)}, or a sharded gptframe checkpoint)"
        )
    hf = read_json(path / "config.json")
    hf_class = _architecture(hf, path, imports)
    spec, task = imports[hf_class]
    adapter = spec.hf
    exact = (read_json(path / GPTFRAME_FILE) if (path / GPTFRAME_FILE).is_file() else {}).get("model_config") or {}
    where = f"{hf_class} in {path}"
    config = adapter.config_from_hf(hf, where)
    tokenizer = load_hf_tokenizer(path)  # gptframe's own files where an export holds them
    if tokenizer.vocab_size > config.vocab_size:
        raise TokenizerError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding only "
            f"{config.vocab_size} rows"
        )
    state = adapter.state_from_hf(read_hf_weights(path), task, where, config)
    if adapter.refine_import is not None:
        config, state = adapter.refine_import(config, state, exact)
    config.pad_vocab_size_multiple = exact.get("pad_vocab_size_multiple", 1)  # informative once vocab_size is set
    model_class = spec.model_class(task)
    labels = _labels(hf) if takes_labels(model_class) else None
    extra = adapter.import_model_kwargs(hf, task) if adapter.import_model_kwargs is not None else {}
    model = build_model(task, config, num_labels=len(labels) if labels else None, **extra)
    _load_weights(model, state, adapter.may_be_missing.get(task, ()), where)
    return LoadedModel(model.eval(), tokenizer, task, config, labels)


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, pytorch_model.bin, or their sharded forms (an index.json naming the shards)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            files = [path / name]
            break
        index = path / f"{name}.index.json"
        if index.is_file():
            try:
                files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
            except (ValueError, KeyError, AttributeError) as e:
                raise CheckpointError(f"{index} is not a valid weight index: {e}") from None
            break
    else:
        raise CheckpointError(f"{path} holds no weights (model.safetensors, pytorch_model.bin, or a sharded index)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{path}: the weight shard {file.name} is missing")
        try:
            if file.name.endswith(".safetensors"):
                from safetensors.torch import load_file

                state.update(load_file(file))
            else:
                state.update(safe_torch_load(file, what="weights file"))  # weights_only: pickled code is refused
        except CheckpointError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{file} cannot be read (truncated or corrupt?): {first}") from None
    return state


def read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file} cannot be read as JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a JSON object")
    return data


def _architecture(hf: dict, path: Path, imports: dict) -> str:
    archs = hf.get("architectures") or []
    base_classes = {t: c for spec in architectures().values() for t, c in spec.hf.base_classes.items()}
    name = archs[0] if archs else base_classes.get(hf.get("model_type", ""))
    if name not in imports:
        found = name or f"model_type={hf.get('model_type')!r} without architectures"
        raise CheckpointError(f"{path}: unsupported architecture {found}; gptframe imports {', '.join(imports)}")
    return name


def _labels(hf: dict) -> list[str]:
    id2label = hf.get("id2label")
    if id2label:
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    return [f"LABEL_{i}" for i in range(hf.get("num_labels", 2))]


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], may_be_missing: tuple[str, ...], where: str) -> None:
    """Strict, except for heads the directory may lack (kept freshly initialised and logged)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes
        raise CheckpointError(f"{where}: weights do not match config.json: {e}") from None
    missing = [k for k in result.missing_keys if not k.startswith(may_be_missing)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{where}: weights do not match the architecture: missing {missing[:6]}, unexpected {result.unexpected_keys[:6]}"
        )
    fresh = sorted({".".join(k.split(".")[:2]) for k in result.missing_keys})  # e.g. bert.pooler, cls.predictions
    if fresh:
        log.info("%s has no weights for %s: freshly initialised", where, ", ".join(fresh))
