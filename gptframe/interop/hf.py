"""gptframe models -> Hugging Face `transformers` model directories.

Export writes a directory `transformers` loads with `from_pretrained` (config.json, model.safetensors, tokenizer
files), plus gptframe's own tokenizer files and `gptframe.json`, so importing the export back (gptframe.loading) is
exact. What each architecture maps to, and how, is its unit's HF adapter (`gptframe/models/<arch>/hf.py`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch.nn as nn

from data_pipelines.prepare import publish_dir
from data_pipelines.tokenizers import Tokenizer
from gptframe.errors import ConfigError, TokenizerError
from gptframe.loading import GPTFRAME_FILE, LoadedModel
from gptframe.registry import architecture

log = logging.getLogger(__name__)

GPTFRAME_FORMAT = 1


def export_class(arch: str, task: str, head: str | None = None) -> str:
    """The transformers class a gptframe model exports as (head: a choice where there are several)."""
    heads = architecture(arch).hf.exports.get(task)
    if heads is None:
        raise ConfigError(f"a {arch.upper()} {task} model has no Hugging Face export")
    if head is None:
        return next(iter(heads.values()))
    if head not in heads:
        raise ConfigError(f"head={head!r} is not available for a {arch.upper()} {task} model (choose from "
                          f"{', '.join(heads)})")
    return heads[head]


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"out dir {out} exists and is not empty (pass overwrite=true to replace it)")


def _special_ids(loaded: LoadedModel, hf_class: str) -> dict:
    tok = loaded.tokenizer
    if loaded.spec.hf.special_token_ids is not None:
        return loaded.spec.hf.special_token_ids(tok, hf_class)
    pad = tok.pad_id
    if hf_class.endswith("ForSequenceClassification"):
        # transformers' decoder classifiers pool the last token that is not pad_token_id, so a batch needs one
        pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
        if pad is None:
            raise TokenizerError(
                f"exporting a {loaded.arch.upper()} classifier as {hf_class} needs a pad or end-of-text token, and "
                f"this {tok.kind} tokenizer has neither"
            )
    return {"pad_token_id": pad, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}


def to_hf_model(loaded: LoadedModel, hf_class: str) -> nn.Module:
    """The transformers model (eval mode) holding `loaded`'s weights. A strict load_state_dict checks the mapping."""
    import transformers

    adapter = loaded.spec.hf
    kwargs = adapter.config_to_hf(loaded.config)
    model_type = kwargs.pop("model_type")
    if adapter.export_kwargs is not None:
        kwargs.update(adapter.export_kwargs(loaded.model))
    kwargs.update(_special_ids(loaded, hf_class), architectures=[hf_class])
    labels = loaded.labels
    if labels is None and hasattr(loaded.model, "num_labels"):
        labels = [f"LABEL_{i}" for i in range(loaded.model.num_labels)]
    if labels is not None:
        kwargs.update(id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    hf_model = getattr(transformers, hf_class)(transformers.AutoConfig.for_model(model_type, **kwargs))
    state = adapter.state_to_hf(loaded.model.state_dict(), loaded.task, hf_class)
    if adapter.complete_export is not None:
        state = adapter.complete_export(loaded.config, state, hf_model.state_dict())
    hf_model.load_state_dict(state, strict=True)
    return hf_model.eval()


def export_model(loaded: LoadedModel, out_dir: str | Path, head: str | None = None, overwrite: bool = False) -> Path:
    """Write `loaded` as a transformers model directory (loadable with from_pretrained / AutoTokenizer) that gptframe
    also imports exactly. Written into a temporary sibling and renamed into place: a failure leaves nothing behind."""
    out = Path(out_dir).expanduser().absolute()
    check_out_dir(out, overwrite)
    hf_class = export_class(loaded.arch, loaded.task, head)
    tokenizer_files = _tokenizer_files(loaded.tokenizer, loaded.spec.context_length(loaded.config))
    hf_model = to_hf_model(loaded, hf_class)
    meta = {"format": GPTFRAME_FORMAT, "task": loaded.task, "arch": loaded.arch, "hf_class": hf_class,
            "labels": loaded.labels, "model_config": asdict(loaded.config)}

    def fill(tmp: Path) -> None:
        hf_model.save_pretrained(tmp)
        for name, data in tokenizer_files.items():
            (tmp / name).write_bytes(data)
        (tmp / GPTFRAME_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    out.parent.mkdir(parents=True, exist_ok=True)
    publish_dir(out, fill, replace=True)
    log.info("exported %s %s model as %s to %s", loaded.arch, loaded.task, hf_class, out)
    return out


def _tokenizer_files(tokenizer: Tokenizer, model_max_length: int) -> dict[str, bytes]:
    """gptframe's own files (exact re-import) and the ones transformers' AutoTokenizer reads."""
    ours, theirs = tokenizer.to_files(), tokenizer.to_hf_files(model_max_length)
    clash = sorted(n for n in ours.keys() & theirs.keys() if ours[n] != theirs[n])
    if clash:  # one name, two contents: one of the two loaders would read the wrong file
        raise RuntimeError(f"{tokenizer.kind} tokenizer: its gptframe and Hugging Face files differ in {clash}")
    return {**ours, **theirs}
