"""Hugging Face Hub datasets as sources: `hf://<owner>/<name>[/<config>][@<revision>]`, read through `datasets`.

`datasets.load_dataset` resolves the name (the Hub, or its local cache with HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1),
the config (a README `configs:` header or a loading script) and the data files. The content fingerprint comes from what
that resolution returns, the data files with the resolved revision in their URLs, never from reading the rows.

`GPTFRAME_HF_LOCAL_REPOS=<dir>` maps `hf://owner/name` to the dataset repository checked out at `<dir>/owner/name`
(parquet/json files plus a README with `configs:`), loaded by path through the same `datasets` code: how tests and
air-gapped sites use the same config as a connected machine. A name with no folder there still goes to the Hub.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from data_pipelines.errors import DataError

PREFIX = "hf://"
LOCAL_REPOS_ENV = "GPTFRAME_HF_LOCAL_REPOS"
_NAME = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<config>[\w.-]+))?(?:@(?P<revision>[\w./-]+))?")


def is_hub_path(path: str) -> bool:
    return path.startswith(PREFIX)


@dataclass(frozen=True)
class HubDataset:
    """A parsed `hf://` name and where `datasets` loads it from (a repo id, or a local repository dir)."""

    repo: str
    config: str | None
    revision: str | None
    split: str
    location: str

    @classmethod
    def parse(cls, path: str, split: str) -> HubDataset:
        m = _NAME.fullmatch(path)
        if m is None:
            raise DataError(f"{path!r} is not a hub dataset name: expected hf://<owner>/<name>[/<config>][@<revision>]")
        local_root = os.environ.get(LOCAL_REPOS_ENV)
        local = Path(local_root) / m["repo"] if local_root else None
        location = str(local) if local is not None and local.is_dir() else m["repo"]
        return cls(m["repo"], m["config"], m["revision"], split, location)

    def _kwargs(self) -> dict:
        return {"name": self.config, "revision": self.revision}

    def fingerprint(self, text_column: str) -> str:
        """From the resolved data files of the split: hub URLs carry the commit they resolved to; local files (a local
        repository, or the Hub's cache) add their size and modification time; offline, a dataset found in the
        `datasets` cache has no files but the hash of the version cached. No row is read."""
        import datasets

        try:
            builder = datasets.load_dataset_builder(self.location, **self._kwargs())
        except Exception as e:  # not on the Hub / not in the offline cache, unknown config, no network
            raise DataError(f"cannot resolve {self}: {type(e).__name__}: {_first_line(e)}") from None
        files = (builder.config.data_files or {}).get(self.split) if builder.config.data_files else None
        if files is None:
            available = sorted(builder.config.data_files or (builder.info.splits or {}))
            if available and self.split not in available:
                raise DataError(f"{self}: no split {self.split!r} (available: {available}); set the source's split")
        h = hashlib.sha256(f"hf\0{self.repo}\0{self.config}\0{self.split}\0{text_column}\0".encode())
        h.update(str(getattr(builder, "hash", "")).encode())  # the builder's hash covers the resolved revision
        for f in sorted(map(str, files or [])):
            h.update(f.encode() + b"\0")
            if os.path.exists(f):
                st = os.stat(f)
                h.update(f"{st.st_size}:{st.st_mtime_ns}\0".encode())
        return h.hexdigest()

    def load(self, streaming: bool):
        """The split as a `datasets` Dataset (Arrow-cached) or IterableDataset (streaming)."""
        import datasets

        try:
            return datasets.load_dataset(self.location, split=self.split, streaming=streaming, **self._kwargs())
        except ValueError as e:
            if "split" in str(e).lower():
                raise DataError(f"{self}: {_first_line(e)}; set the source's split") from None
            raise DataError(f"cannot load {self}: {_first_line(e)}") from None
        except Exception as e:
            raise DataError(f"cannot load {self}: {type(e).__name__}: {_first_line(e)}") from None

    def __str__(self) -> str:
        name = PREFIX + self.repo + (f"/{self.config}" if self.config else "") + (f"@{self.revision}" if self.revision else "")
        hint = "" if self.location == self.repo else f" (local repository {self.location})"
        offline = " offline (HF_DATASETS_OFFLINE=1: only datasets in the local cache resolve)" if _offline() else ""
        return f"{name}{hint}{offline if self.location == self.repo else ''}"


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
