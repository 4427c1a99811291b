"""Reading gptframe checkpoints: clear errors for missing or truncated files, and models for inference."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from data_pipelines.tokenizers import Tokenizer, tokenizer_from_files
from gptframe.errors import CheckpointError
from gptframe.models.gpt import GPT, GPTConfig
from gptframe.tasks.causal_lm import CHECKPOINT_KEY

LAST = "last.ckpt"


def load_checkpoint(path: str | Path, mmap: bool = True) -> dict:
    """torch.load with errors that name the file and the problem. mmap: tensors stay on disk until touched."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint (no complete zip archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a gptframe checkpoint (no '{CHECKPOINT_KEY}' section)")
    return ckpt


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """The plain model (eval mode) and tokenizer a checkpoint holds, plus its gptframe metadata."""
    ckpt = load_checkpoint(path)
    meta = ckpt[CHECKPOINT_KEY]
    model = GPT(GPTConfig(**meta["model_config"]))
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: weights do not match its model config: {e}") from None
    tokenizer = tokenizer_from_files(meta["tokenizer_files"])
    return model.to(device).eval(), tokenizer, meta
