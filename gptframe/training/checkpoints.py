"""gptframe checkpoints: Lightning checkpoints with a `gptframe` section that makes them self-contained.

The section holds what rebuilds the plain model without any config: the task (`clm`, `mlm`, `classification`), the
model config (with its `arch`), the label names of a classifier, and the tokenizer's files.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from gptframe.errors import CheckpointError
from gptframe.training.safe_loading import read_dcp_metadata, safe_filesystem_reader, safe_torch_load

LAST = "last.ckpt"
CHECKPOINT_KEY = "gptframe"  # our section of a Lightning checkpoint
CHECKPOINT_FORMAT = 2
MODEL_PREFIX = "model."  # the LightningModule's attribute holding the plain model
SHARDED_META_FILE = "meta.pt"  # Lightning's non-tensor part of a sharded checkpoint directory


def load_checkpoint(path: str | Path, mmap: bool = True) -> dict:
    """torch.load(weights_only=True) with errors that name the file and the problem: a file that holds pickled code
    is refused without running it (safe_loading). mmap: tensors stay on disk until touched.

    A directory is a sharded checkpoint (Lightning's ModelParallelStrategy / FSDP2): it is consolidated in memory.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        ckpt = _load_sharded_checkpoint(path)
    elif not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    elif not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint (no complete zip archive)")
    else:
        try:
            ckpt = safe_torch_load(path, mmap=mmap)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a gptframe checkpoint (no '{CHECKPOINT_KEY}' section)")
    meta = _checked_section(ckpt[CHECKPOINT_KEY], path)
    meta.setdefault("task", "clm")  # format 1 had only causal LMs
    meta.setdefault("labels", None)
    meta["model_config"].setdefault("arch", "gpt")  # format 1 predates every other architecture
    if not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path} is not a gptframe checkpoint (its state_dict is not a dict of tensors)")
    return ckpt


def _checked_section(meta, path: Path) -> dict:
    """The gptframe section, after checking its shape: a file from elsewhere may hold anything under that key."""
    shapes = {"model_config": dict, "tokenizer_files": dict, "task": str}
    wrong = [k for k, kind in shapes.items() if k in meta and not isinstance(meta[k], kind)] if isinstance(meta, dict) else []
    if not isinstance(meta, dict) or "model_config" not in meta or "tokenizer_files" not in meta or wrong:
        raise CheckpointError(
            f"{path} is not a valid gptframe checkpoint: its '{CHECKPOINT_KEY}' section lacks or mistypes "
            f"{', '.join(wrong) or 'model_config/tokenizer_files'}"
        )
    return meta


def _load_sharded_checkpoint(path: Path) -> dict:
    """A torch.distributed.checkpoint directory as Lightning writes it (`.metadata`, `*.distcp` shards, and `meta.pt`
    with everything but the weights and optimizer states), as one full state dict in CPU memory. Only the weights are
    read: the optimizer states (twice the model for AdamW) are not needed to use or export a model."""
    meta_file = _checked_sharded_dir(path)
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    ckpt: dict = {}
    try:
        _load_state_dict(ckpt, storage_reader=safe_filesystem_reader(path), planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}),
                         no_dist=True)
        extra = safe_torch_load(meta_file, what="sharded checkpoint metadata")
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        cause = next(iter(e.failures.values()), (e,))[0] if isinstance(e, CheckpointException) else e  # (exc, trace)
        reason = f"{type(cause).__name__}: {cause}".strip().splitlines()[0].rstrip(": ")
        raise CheckpointError(f"sharded checkpoint {path} cannot be read (truncated or corrupt?): {reason}") from None
    if isinstance(extra, dict):
        ckpt.update({k: v for k, v in extra.items() if k != "state_dict"})
    return ckpt


def read_checkpoint_meta(path: str | Path) -> dict:
    """Everything in a checkpoint but its tensors' bulk: the gptframe section, global_step, loop state. Cheap also
    for sharded directories (only `meta.pt` is read), so every rank can afford it before training."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return load_checkpoint(path)  # memory-mapped: tensors stay on disk
    meta_file = _checked_sharded_dir(path)
    try:
        meta = safe_torch_load(meta_file, what="sharded checkpoint metadata")
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"sharded checkpoint {path}: {SHARDED_META_FILE} cannot be read: {e}") from None
    if not isinstance(meta, dict) or CHECKPOINT_KEY not in meta:
        raise CheckpointError(f"{path} is not a gptframe checkpoint (no '{CHECKPOINT_KEY}' section)")
    _checked_section(meta[CHECKPOINT_KEY], path)
    return meta


def _checked_sharded_dir(path: Path) -> Path:
    """The meta file of a sharded checkpoint directory, after checking that the directory is one and complete."""
    meta_file = path / SHARDED_META_FILE
    if not meta_file.is_file():
        raise CheckpointError(
            f"{path} is a directory but not a sharded Lightning checkpoint (no {SHARDED_META_FILE}); "
            "expected a .ckpt file or a checkpoint directory written by trainer=fsdp"
        )
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"sharded checkpoint {path} is incomplete: its .metadata index is missing")
    read_dcp_metadata(path)  # refuses a crafted index before torch.distributed.checkpoint would unpickle it
    return meta_file
