"""Preparation split over ranks: the same bytes and index for any number of processes, resumable, truncation-safe."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import numpy as np
import pytest

from data_pipelines.config import DataConfig, TokenizerConfig
from data_pipelines.errors import DataError
from data_pipelines.prepare import prepare, prepare_rank_from_env, prepare_sources
from tests.conftest import BIN, REPO

CHAR = TokenizerConfig(kind="char")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_text):
    """~2.3M characters of JSON lines (shuffled Shakespeare lines): 3 train work units of ~1M characters."""
    lines = [line for line in shakespeare_text.splitlines() if line.strip()]
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for _ in range(3000):
            f.write(json.dumps({"text": " ".join(rng.choice(lines, size=24))}) + "\n")
    return path


def _data(corpus, cache, **kw) -> DataConfig:
    return DataConfig(path=str(corpus), cache_dir=str(cache), num_proc=1, shard_units=1, **kw)


def _digest(prepared) -> dict:
    files = ("train.bin", "val.bin", "index.json")
    return {f: hashlib.sha256((prepared.directory / f).read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    tok, prepared = prepare(_data(corpus, tmp_path_factory.mktemp("ref")), CHAR)
    return tok, prepared


def test_ranks_in_turn_give_the_single_process_bytes(corpus, reference, tmp_path):
    tok, single = reference
    assert single.num_tokens("train") > 2 * (1 << 20)  # several shards to share out
    cfg = _data(corpus, tmp_path)
    done = [prepare_sources(cfg, CHAR, tok, rank=r, world_size=3)[1] for r in (2, 0, 1)]
    assert done[:2] == [None, None] and done[2] is not None  # the last rank to finish writes the index
    assert _digest(done[2][0].data) == _digest(single)
    assert not list((tmp_path / "datasets").glob("*.parts"))  # the parts are gone once published


def test_concurrent_ranks_from_the_environment_match_one_process(corpus, reference, tmp_path):
    """Real processes started with torchrun's RANK/WORLD_SIZE, as gptframe-prepare reads them."""
    _, single = reference
    args = [str(BIN / "gptframe-prepare"), f"data.path={corpus}", f"data.cache_dir={tmp_path}", "tokenizer=char",
            "data.num_proc=1", "data.shard_units=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "HYDRA_FULL_ERROR": "0"}
    procs = [subprocess.Popen(args, env={**env, "RANK": str(r)}, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    reports = [json.loads(out) for out, _ in outputs]
    assert {r["rank"] for r in reports} == {0, 1}
    # the rank that found every shard done published; one that finished before the other reported only its part
    finished = {r["data"] for r in reports if "data" in r}
    assert len(finished) == 1
    from data_pipelines.prepare import PreparedData

    assert _digest(PreparedData.load(finished.pop())) == _digest(single)


def test_an_interrupted_run_keeps_its_finished_shards(corpus, reference, tmp_path, caplog):
    tok, single = reference
    cfg = _data(corpus, tmp_path)
    assert prepare_sources(cfg, CHAR, tok, rank=0, world_size=2)[1] is None  # rank 1 never ran
    parts = next((tmp_path / "datasets").glob("*.parts"))
    assert list(parts.glob("*.bin"))  # rank 0's shards
    # one of them was cut short on disk (a node died while copying, a full disk): redone, not trusted
    victim = sorted(parts.glob("train-*.bin"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    caplog.set_level("WARNING")
    _, resumed = prepare(cfg, CHAR, tok)  # one process finishes the job
    assert _digest(resumed) == _digest(single)
    assert f"shard {victim} holds 100 bytes" in caplog.text


def test_a_rank_finishing_after_another_published_returns_the_data(corpus, reference, tmp_path, monkeypatch):
    """Rank 0 is about to record the val shard count when rank 1, finding every shard done, publishes the data and
    removes the parts: rank 0 must return that data, not fail on the vanished directory (seen in CI)."""
    import data_pipelines.prepare as prep

    tok, single = reference
    cfg = _data(corpus, tmp_path)
    real = prep._write_atomic
    interleaved: dict = {}

    def write_after_rank_1(path, text):
        if path.name == "val.shards" and "rank 1" not in interleaved:
            interleaved["rank 1"] = None  # rank 1's own count writes go straight through
            interleaved["rank 1"] = prepare_sources(cfg, CHAR, tok, rank=1, world_size=2)[1]
        real(path, text)

    monkeypatch.setattr(prep, "_write_atomic", write_after_rank_1)
    done = prepare_sources(cfg, CHAR, tok, rank=0, world_size=2)[1]
    assert interleaved["rank 1"] is not None and not list((tmp_path / "datasets").glob("*.parts"))  # rank 1 published
    assert done is not None and _digest(done[0].data) == _digest(single)


def test_resume_tokenizes_only_the_missing_shards(corpus, reference, tmp_path, monkeypatch):
    import data_pipelines.prepare as prep

    tok, single = reference
    cfg = _data(corpus, tmp_path)
    prepare_sources(cfg, CHAR, tok, rank=1, world_size=2)
    encoded = []
    real = prep._encode_unit
    monkeypatch.setattr(prep, "_encode_unit", lambda unit, *a: encoded.append(len(unit)) or real(unit, *a))
    _, resumed = prepare(cfg, CHAR, tok)
    assert _digest(resumed) == _digest(single)
    # rank 1 had done train shard 1 (of 0..2) and nothing of val (1 shard, rank 0's): 2 train + 1 val units remain
    assert len(encoded) == 3


def test_a_rerun_with_another_shard_size_starts_afresh(corpus, reference, tmp_path):
    """Shards made with data.shard_units=1 hold other units than shards of 2: a rerun must not take them."""
    tok, single = reference
    assert prepare_sources(_data(corpus, tmp_path), CHAR, tok, rank=0, world_size=2)[1] is None
    other = DataConfig(path=str(corpus), cache_dir=str(tmp_path), num_proc=1, shard_units=2)
    _, resumed = prepare(other, CHAR, tok)
    assert _digest(resumed) == _digest(single)
    assert not list((tmp_path / "datasets").glob("*.parts"))  # both plans' parts are gone once published


def test_work_units_are_bounded_and_keep_the_stream():
    from data_pipelines.prepare import _work_units
    from data_pipelines.sources import TEXT_CHUNK_CHARS

    # full chunks, the short tail of one file, then the next file's full chunks (and a piece longer than a unit)
    pieces = [("a" * TEXT_CHUNK_CHARS, False), ("b" * 10, True), ("c" * TEXT_CHUNK_CHARS, False),
              ("d" * 7, False), ("e" * (TEXT_CHUNK_CHARS + 5), True)] + [("row", True)] * 5
    units = list(_work_units(iter(pieces)))
    assert [piece for unit in units for piece in unit] == pieces
    assert all(sum(len(t) for t, _ in u) <= TEXT_CHUNK_CHARS or len(u) == 1 for u in units)
    assert [len(u) for u in units] == [1, 1, 1, 1, 1, 5]


def test_a_truncated_prepared_split_is_rebuilt(corpus, reference, tmp_path, caplog):
    tok, single = reference
    _, prepared = prepare(_data(corpus, tmp_path), CHAR, tok)
    train = prepared.directory / "train.bin"
    with open(train, "r+b") as f:
        f.truncate(train.stat().st_size // 2)
    caplog.set_level("WARNING")
    _, again = prepare(_data(corpus, tmp_path), CHAR, tok)
    assert f"{train} holds" in caplog.text and "rebuilding" in caplog.text
    assert _digest(again) == _digest(single)


def test_a_shard_changed_on_disk_is_refused_with_its_path(corpus, reference, tmp_path):
    tok, _ = reference
    cfg = _data(corpus, tmp_path)
    prepare_sources(cfg, CHAR, tok, rank=0, world_size=2)
    shard = sorted(next((tmp_path / "datasets").glob("*.parts")).glob("train-*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[10] ^= 1  # same size, different content
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"shard {shard} does not match its recorded hash"):
        prepare_sources(cfg, CHAR, tok, rank=1, world_size=2)
    assert not list((tmp_path / "datasets").glob("*/index.json"))  # nothing published
    _, prepared = prepare(cfg, CHAR, tok)  # a rerun redoes it
    assert prepared.damage() is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 1)),
        ({"RANK": "3", "WORLD_SIZE": "4"}, (3, 4)),
        ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"}, (1, 4)),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, (0, 1)),  # the batch shell itself is not one of srun's tasks
        ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "2",
          "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}, (5, 6)),
    ],
)
def test_rank_and_world_size_from_the_launcher(env, expected):
    assert prepare_rank_from_env(env) == expected


def test_an_impossible_rank_is_refused():
    with pytest.raises(DataError, match="rank 4 is not in"):
        prepare_rank_from_env({"RANK": "4", "WORLD_SIZE": "4"})
