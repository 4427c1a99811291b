"""Read back what an offline W&B run recorded: `<run dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb`.

The file is a LevelDB log (the header ":W&B", 0xBEE1, version 0; then 32 KiB blocks of records, each with a
7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST) of `wandb_internal_pb2.Record` protobufs. wandb 0.31
ships no Python reader (its Go core writes the file), so this is one, for the tests.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK_SIZE = 32 * 1024
FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path):
    """Every Record in a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(FILE_HEADER):
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:7]!r})")
    pos, pending = len(FILE_HEADER), b""
    while pos + RECORD_HEADER <= len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < RECORD_HEADER:  # a block's tail too short for a header is zero padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + RECORD_HEADER])
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        if kind in (FIRST, MIDDLE):
            pending = (b"" if kind == FIRST else pending) + chunk
            continue
        payload = pending + chunk if kind == LAST else chunk
        pending = b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


@dataclass
class OfflineRun:
    directory: Path
    run_id: str = ""
    project: str = ""
    display_name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    resumed: bool = False
    config: dict = field(default_factory=dict)  # top-level key -> value
    history: list[dict] = field(default_factory=list)  # one dict per logged row (nested keys as nested dicts)

    def rows_with(self, key: str) -> list[dict]:
        return [row for row in self.history if key in row]

    def table(self, row: dict, key: str) -> dict:
        """The {"columns", "data"} of a table logged in `row` under `key`."""
        return json.loads((self.directory / "files" / row[key]["path"]).read_text())


def _item_key(item) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _set(target: dict, path: list[str], value) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def read_offline_run(directory: Path) -> OfflineRun:
    """The run, config and history of one offline-run-* directory."""
    directory = Path(directory)
    (log_file,) = directory.glob("run-*.wandb")
    run = OfflineRun(directory)
    for record in read_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.display_name, run.group = r.run_id, r.project, r.display_name, r.run_group
            run.tags, run.resumed = list(r.tags), r.resume
            updates = r.config.update
        elif kind == "config":
            updates = record.config.update
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _set(row, _item_key(item), json.loads(item.value_json))
            run.history.append(row)
            continue
        else:
            continue
        for item in updates:
            _set(run.config, _item_key(item), json.loads(item.value_json))
    return run


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """The offline W&B runs a run dir holds, oldest first (one per invocation of a resumed run)."""
    return [read_offline_run(d) for d in sorted((Path(run_dir) / "wandb").glob("offline-run-*"))]
