"""Loading files that someone else may have written, without running their code.

Every torch file gptframe opens for a user (checkpoints, the `meta.pt` of a sharded checkpoint, an HF
`pytorch_model.bin`) goes through `safe_torch_load`: `torch.load(weights_only=True)`, whose unpickler builds only
tensors and plain containers and refuses any other global *before* calling it. gptframe's own checkpoints need
nothing more (their `gptframe` section is plain types; numpy's RNG keys are stored as a tensor), so the allowlist
(`SAFE_GLOBALS`) is empty: widening it is a security decision, not a convenience.

A checkpoint written by an early gptframe (numpy arrays in its RNG state) is refused like any other pickle; if you
trust the file, `python -m gptframe.training.safe_loading convert OLD.ckpt NEW.ckpt` rewrites it as plain types.
"""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from gptframe.errors import CheckpointError

# Types beyond tensors and plain containers that gptframe's files may hold. Deliberately none.
SAFE_GLOBALS: list[Any] = []


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a torch zip file would import, read from its pickle without executing it."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip torch file: the caller's error message says enough
        return []


def refusal(path: Path, what: str, unsafe: list[str]) -> CheckpointError:
    found = ", ".join(unsafe[:3]) + (", ..." if len(unsafe) > 3 else "") if unsafe else "a non-plain object"
    if what == "checkpoint":
        hint = ("if you wrote it yourself with an older gptframe and trust it, convert it with "
                f"`python -m gptframe.training.safe_loading convert {path} NEW.ckpt`")
    else:
        hint = "if the file is yours, rewrite it from a trusted copy (gptframe-export writes safetensors)"
    return CheckpointError(
        f"{what} {path} refused: it holds pickled code or objects ({found}), and gptframe loads only tensors and plain "
        f"values from files; {hint}"
    )


def safe_torch_load(path: str | Path, what: str = "checkpoint", **kwargs) -> Any:
    """torch.load(weights_only=True). A file that needs anything else is refused with a CheckpointError naming it
    (nothing of it is executed); other read errors propagate for the caller to describe."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower() or "weights_only" in str(e):
            raise refusal(path, what, _unsafe_globals(path)) from None
        raise


# torch.distributed.checkpoint reads a sharded directory's `.metadata` index with a bare pickle.load, which would run
# any code a crafted index holds. These are the only globals a real index needs (checked by the unpickler below).
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_DCP_GLOBALS = {
    *((_DCP_METADATA, name) for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                          "ChunkStorageMetadata", "TensorProperties", "MetadataIndex", "StorageMeta",
                                          "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class _DcpMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_dcp_metadata(directory: Path) -> Any:
    """A sharded checkpoint's `.metadata` index, unpickled with only the index's own types allowed."""
    file = directory / ".metadata"
    try:
        with open(file, "rb") as f:
            return _DcpMetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise refusal(file, "sharded checkpoint index", [str(e)]) from None
    except Exception as e:
        raise CheckpointError(f"sharded checkpoint {directory}: its .metadata index cannot be read: {e}") from None


def safe_filesystem_reader(directory: Path):
    """torch.distributed.checkpoint's FileSystemReader, reading the index through `read_dcp_metadata`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            metadata = read_dcp_metadata(Path(self.path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(directory)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars as tensors and Python numbers, containers recursively; everything else unchanged."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value


def convert_trusted_checkpoint(src: Path, dst: Path) -> None:
    """Rewrite a checkpoint the user trusts (it is unpickled with code execution allowed!) as plain types that
    `safe_torch_load` accepts. Refuses when something other than numpy values stands in the way."""
    from gptframe.training.checkpoint_io import write_file_atomically

    ckpt = _plain(torch.load(src, map_location="cpu", weights_only=False))
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{src} holds objects other than numpy values; it cannot be converted") from None
    write_file_atomically(buffer.getvalue(), dst)


def main(argv: list[str] | None = None) -> None:
    from gptframe.cli.common import user_errors_exit

    argv = sys.argv[1:] if argv is None else argv
    with user_errors_exit("gptframe.training.safe_loading"):
        if len(argv) != 3 or argv[0] != "convert":
            raise CheckpointError("usage: python -m gptframe.training.safe_loading convert TRUSTED.ckpt NEW.ckpt")
        convert_trusted_checkpoint(Path(argv[1]), Path(argv[2]))
        print(argv[2])


if __name__ == "__main__":
    main()
