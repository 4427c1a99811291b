"""Building models from configs through the architecture registry: the one place that maps (task, arch) to a class."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from gptframe.registry import architecture, architecture_of


def model_config_from_dict(values: dict):
    """A plain model config from its dict (checkpoints, gptframe.json); nested dataclass fields are rebuilt too."""
    spec = architecture(values.get("arch"))
    return _build_dataclass(spec.config_class, values)


def _build_dataclass(cls, values: dict):
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"{cls.__name__} has no field {key!r}")
        nested = _dataclass_type(cls, key)
        kwargs[key] = _build_dataclass(nested, value) if nested is not None and isinstance(value, dict) else value
    return cls(**kwargs)


def _dataclass_type(cls, name: str):
    """The dataclass a field holds (`X | None` included), or None."""
    import typing

    hint = typing.get_type_hints(cls).get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def model_class(task: str, arch: str) -> type[nn.Module]:
    return architecture(arch).model_class(task)


def build_model(task: str, config, num_labels: int | None = None, **extra) -> nn.Module:
    """The model the architecture trains `task` with; tasks with a label set pass num_labels."""
    cls = architecture_of(config).model_class(task)
    if num_labels is not None:
        extra["num_labels"] = num_labels
    return cls(config, **extra)


def backbone(model: nn.Module) -> nn.Module:
    """The part of a model that pretraining trains and fine-tuning reuses."""
    return architecture_of(model.config).backbone(model)


def resolve_vocab_size(model, tokenizer):
    """The model config with its vocab size from the tokenizer, padded up to `pad_vocab_size_multiple`; an explicit
    size must fit the tokenizer. Raises ValueError."""
    multiple = model.pad_vocab_size_multiple
    padded = -(-tokenizer.vocab_size // multiple) * multiple
    if model.vocab_size is not None:
        if model.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"the {tokenizer.kind} tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size={model.vocab_size}"
                " (the model's vocabulary); use the tokenizer the model was trained with, or model.vocab_size=null "
                "(sized from the tokenizer)"
            )
        padded = model.vocab_size
    return dataclasses.replace(model, vocab_size=padded)


def transfer_weights(source: nn.Module, target: nn.Module, heads: bool = True) -> str:
    """Initialise `target` from `source`: the whole model when both are the same kind with the same shapes (and
    `heads`: their label sets agree), else the backbone (heads stay freshly initialised). Returns what was copied."""
    if type(source) is type(target) and heads:
        src, tgt = source.state_dict(), target.state_dict()
        if src.keys() == tgt.keys() and all(src[k].shape == tgt[k].shape for k in src):
            target.load_state_dict(src)
            return "all weights"
        grown = _grown_vocab_rows(src, tgt, source.config.vocab_size, target.config.vocab_size)
        if grown is not None:
            target.load_state_dict(grown)
            return f"all weights, vocabulary {source.config.vocab_size} -> {target.config.vocab_size} (new rows: the mean)"
    # Per-token heads have no pooler: the source's extra backbone parts are left out, and parts the source lacks
    # (a pooler, when a sequence classifier starts from a token classifier) stay freshly initialised.
    wanted = backbone(target).state_dict().keys()
    result = backbone(target).load_state_dict(
        {k: v for k, v in backbone(source).state_dict().items() if k in wanted}, strict=False
    )
    fresh = f"; fresh: {', '.join(sorted({k.split('.')[0] for k in result.missing_keys}))}" if result.missing_keys else ""
    return f"the {type(backbone(target)).__name__} backbone (new {type(target).__name__} heads{fresh})"


def _grown_vocab_rows(src: dict, tgt: dict, old_vocab: int | None, new_vocab: int | None) -> dict | None:
    """`src` for a model whose vocabulary grew (e.g. by a chat template's tokens): each tensor with a vocab-sized
    first dimension (embedding, LM head, their biases) keeps its old rows and gets the mean of them as each new row,
    so new tokens start as an average token (as transformers' resize_token_embeddings(mean_resizing=True)) rather
    than at random logits that dominate the softmax. None when the models differ otherwise."""
    if src.keys() != tgt.keys() or old_vocab is None or new_vocab is None or new_vocab <= old_vocab:
        return None
    out = {}
    for key, value in src.items():
        shape = tgt[key].shape
        if value.shape == shape:
            out[key] = value
        elif value.dim() and value.shape[0] == old_vocab and shape[0] == new_vocab and value.shape[1:] == shape[1:]:
            mean = value.float().mean(0, keepdim=True).to(value.dtype)
            out[key] = torch.cat([value, mean.expand(new_vocab - old_vocab, *value.shape[1:])])
        else:
            return None
    return out
