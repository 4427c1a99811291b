"""One entry point for every place a model comes from: a gptframe checkpoint, a gptframe export, or a Hugging Face
model directory. Used by generation, the pipelines and `model.init_from`."""

from __future__ import annotations

from pathlib import Path

import torch

from gptframe.errors import CheckpointError
from gptframe.training.checkpoints import LoadedModel, model_from_checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The plain model (eval mode), its tokenizer, task and labels, from a `.ckpt` file or a model directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        from gptframe.interop.hf import load_hf_directory

        loaded = load_hf_directory(path)
        loaded.model.to(device).eval()
        return loaded
    if not path.exists():
        raise CheckpointError(
            f"checkpoint not found: {path} (expected a gptframe .ckpt file, a gptframe export or a Hugging Face model dir)"
        )
    return model_from_checkpoint(path, device)


def require_task(loaded: LoadedModel, task: str, arch: str | None, what: str, path: str | Path) -> None:
    """A clear error when a model cannot do what it is asked (e.g. generate text with a BERT)."""
    if loaded.task != task or (arch is not None and loaded.arch != arch):
        raise CheckpointError(
            f"{what} needs a {arch.upper() + ' ' if arch else ''}{task} model, but {path} holds a {loaded.arch.upper()} "
            f"{loaded.task} model"
        )
