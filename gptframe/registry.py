"""Name -> unit lookups: architectures (`gptframe/models/<arch>/`) and tasks (`gptframe/tasks/`).

Generic code (training, inference, interop, the CLIs) asks these registries what an architecture or a task needs and
never names one. An architecture registers itself in its package's `__init__.py`; `architectures()` imports every
package under `gptframe/models/`, so a new architecture is found without being listed anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn


@dataclass(frozen=True)
class HFAdapter:
    """How an architecture maps to Hugging Face `transformers`, both ways.

    config_to_hf returns the kwargs of the transformers config class, `model_type` included
    (`transformers.AutoConfig.for_model`). The state functions map plain state dicts for a task.
    """

    imports: Mapping[str, str]  # transformers class -> the task it is imported as
    exports: Mapping[str, Mapping[str, str]]  # task -> export head -> transformers class; the first is the default
    base_classes: Mapping[str, str]  # config.json model_type -> class, for configs without `architectures`
    config_from_hf: Callable[[dict, str], Any]  # (config.json, where) -> our config; unsupported fields raise
    config_to_hf: Callable[[Any], dict]
    state_from_hf: Callable[[dict, str, str, Any], dict]  # (HF state, task, where, our config) -> our state
    state_to_hf: Callable[[dict, str, str], dict]  # (our state, task, hf class) -> HF state
    # heads a directory may lack (task -> parameter-name prefixes), freshly initialised on import
    may_be_missing: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # (config, state, gptframe.json's exact model config) -> (config, state): what the HF format cannot express
    refine_import: Callable[[Any, dict, dict], tuple[Any, dict]] | None = None
    # (config, our state, the transformers model's state) -> our state completed with what the HF class has and
    # ours lacks (e.g. zero biases)
    complete_export: Callable[[Any, dict, dict], dict] | None = None
    # (task model) -> extra transformers config kwargs an export needs (e.g. a classifier's own dropout)
    export_kwargs: Callable[[nn.Module], dict] | None = None
    # (config.json, task) -> extra kwargs of the task model class built on import (e.g. that dropout again)
    import_model_kwargs: Callable[[dict, str], dict] | None = None
    # (tokenizer, hf_class) -> pad/bos/eos token ids written to config.json; None: the tokenizer's own
    special_token_ids: Callable[[Any, str], dict] | None = None


@dataclass(frozen=True)
class ArchitectureSpec:
    """Everything generic code needs to know about one architecture."""

    name: str  # the config's `arch` value and the `<name>_schema` of the `model` config group
    config_class: type  # the plain dataclass config; its `arch` field equals `name`
    models: Mapping[str, type[nn.Module]]  # task -> model class: cls(config, **task_kwargs)
    block_class: type[nn.Module]  # the unit of FSDP sharding, activation checkpointing and per-block compile
    backbone: Callable[[nn.Module], nn.Module]  # the part pretraining trains and fine-tuning reuses
    context_length: Callable[[Any], int]  # positions the model attends over
    flops_per_token: Callable[[Any, int, bool], float]  # (config, seq_len, lm_head) -> training FLOPs per token
    describe: Callable[[Any], str]  # one line for the log
    hidden_states: Callable[[nn.Module, dict], Any]  # (backbone, encoded batch) -> last hidden states [B, T, H]
    hf: HFAdapter
    # decoders generate (KV cache via model.new_kv_cache) and read a pair as "A <sep> B", pooling the last token;
    # encoders read "[CLS] A [SEP] B [SEP]" with token types and pool [CLS]
    causal: bool = True

    def model_class(self, task: str) -> type[nn.Module]:
        if task not in self.models:
            raise ValueError(
                f"task={task} does not train a {self.name.upper()} model ({self.name} trains: {', '.join(self.models)})"
            )
        return self.models[task]


_ARCHITECTURES: dict[str, ArchitectureSpec] = {}
_DISCOVERED = False


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    if _ARCHITECTURES.get(spec.name, spec) is not spec:
        raise ValueError(f"architecture {spec.name!r} is registered twice")
    _ARCHITECTURES[spec.name] = spec
    return spec


def architectures() -> dict[str, ArchitectureSpec]:
    """Every architecture, after importing each package under gptframe/models/ once."""
    global _DISCOVERED
    if not _DISCOVERED:
        import gptframe.models as models_pkg

        for info in pkgutil.iter_modules(models_pkg.__path__):
            if info.ispkg:
                importlib.import_module(f"{models_pkg.__name__}.{info.name}")
        _DISCOVERED = True
    return _ARCHITECTURES


def architecture(name: str) -> ArchitectureSpec:
    specs = architectures()
    if name not in specs:
        raise ValueError(f"unknown model arch {name!r}; known: {', '.join(sorted(specs))}")
    return specs[name]


def architecture_of(config: Any) -> ArchitectureSpec:
    return architecture(config.arch)
