"""Which plain model a (config, task) pair means: the one place that maps names to classes."""

from __future__ import annotations

import torch.nn as nn

from gptframe.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification
from gptframe.models.gpt import GPT, GPTConfig, GPTForSequenceClassification

MODEL_CONFIGS = {"gpt": GPTConfig, "bert": BertConfig}
# task -> arch -> model class; a missing pair is a combination gptframe does not train
MODELS: dict[str, dict[str, type[nn.Module]]] = {
    "clm": {"gpt": GPT},
    "mlm": {"bert": BertForPreTraining},
    "classification": {"gpt": GPTForSequenceClassification, "bert": BertForSequenceClassification},
}


def model_config_from_dict(values: dict) -> GPTConfig | BertConfig:
    arch = values.get("arch")
    if arch not in MODEL_CONFIGS:
        raise ValueError(f"unknown model arch {arch!r}; known: {sorted(MODEL_CONFIGS)}")
    return MODEL_CONFIGS[arch](**values)


def model_class(task: str, arch: str) -> type[nn.Module]:
    if task not in MODELS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(MODELS)}")
    if arch not in MODELS[task]:
        archs = ", ".join(f"task={t} with {'/'.join(a)}" for t, a in MODELS.items())
        raise ValueError(f"task={task} does not train a {arch.upper()} model (supported: {archs})")
    return MODELS[task][arch]


def build_model(task: str, config: GPTConfig | BertConfig, num_labels: int | None = None) -> nn.Module:
    cls = model_class(task, config.arch)
    if task == "classification":
        if not num_labels or num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {num_labels}")
        return cls(config, num_labels)
    return cls(config)


def backbone(model: nn.Module) -> nn.Module:
    """The part of a model that pretraining trains and fine-tuning reuses: GPT itself, or the BERT encoder."""
    for name in ("gpt", "bert"):
        if hasattr(model, name):
            return getattr(model, name)
    return model


def transfer_weights(source: nn.Module, target: nn.Module) -> str:
    """Initialise `target` from `source`: the whole model when both are the same kind with the same shapes,
    else the backbone (heads stay freshly initialised). Returns what was copied, for the log."""
    if type(source) is type(target):
        src, tgt = source.state_dict(), target.state_dict()
        if src.keys() == tgt.keys() and all(src[k].shape == tgt[k].shape for k in src):
            target.load_state_dict(src)
            return "all weights"
    backbone(target).load_state_dict(backbone(source).state_dict())
    return f"the {type(backbone(target)).__name__} backbone (new {type(target).__name__} heads)"
