"""launch/slurm/prepare.sbatch: data preparation split over 2 nodes x 2 tasks gives byte for byte what 1 node x 1
task gives (token shards and index), and an interrupted job resumed as a job array finishes it the same way."""

from __future__ import annotations

import hashlib
import json

import numpy as np

FILES = ("train.bin", "val.bin", "index.json")


def _corpus(path, shakespeare_text):
    """~2.3M characters of JSON lines: 3 train shards of one ~1M-character work unit each, and a val shard."""
    lines = [line for line in shakespeare_text.splitlines() if line.strip()]
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(3000):
            f.write(json.dumps({"text": " ".join(rng.choice(lines, size=24))}) + "\n")
    return path


def _prepared(cache):
    [index] = list((cache / "datasets").glob("*/index.json"))
    return index.parent


def _digests(directory) -> dict:
    return {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in FILES}


def test_two_nodes_by_two_tasks_prepare_the_bytes_of_one_task(slurm, tmp_path, shakespeare_text):
    corpus = _corpus(tmp_path / "docs.jsonl", shakespeare_text)
    common = [f"data.path={corpus}", "tokenizer.vocab_size=600", "data.shard_units=1"]
    one = slurm.sbatch("prepare.sbatch", *common, f"data.cache_dir={tmp_path / 'one'}",
                       options=("--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10"))
    four = slurm.sbatch("prepare.sbatch", *common, f"data.cache_dir={tmp_path / 'four'}",
                        options=("--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10"))
    slurm.wait_finished(one, timeout=300)
    slurm.wait_finished(four, timeout=300)
    out = four.out.read_text()
    reports = [json.loads(block) for block in _json_blocks(out)]
    assert sorted(r["rank"] for r in reports) == [0, 1, 2, 3] and {r["world_size"] for r in reports} == {4}, out
    assert "2 node(s) (n[1-2]) x 2 task(s)" in out  # the job spanned both nodes (common.sh's first line)
    assert _digests(_prepared(tmp_path / "four")) == _digests(_prepared(tmp_path / "one"))
    # each shard was tokenized exactly once, by rank (shard index mod 4) within its split: with 3 train shards and 1 val
    # shard rank 0 takes two and rank 3 none, so which ranks worked depends on the split's shard counts
    tokenized = _shards_tokenized(out, world=4)
    assert set(tokenized) <= {0, 1, 2, 3} and sum(tokenized.values()) == 4, tokenized


def test_a_job_array_finishes_what_an_interrupted_job_left(slurm, tmp_path, shakespeare_text):
    corpus = _corpus(tmp_path / "docs.jsonl", shakespeare_text)
    common = [f"data.path={corpus}", "tokenizer=char", "data.shard_units=1", f"data.cache_dir={tmp_path / 'c'}"]
    # an "interrupted" preparation: only rank 0 of 2 ran (RANK/WORLD_SIZE as torchrun would set them)
    partial = slurm.sbatch("prepare.sbatch", *common,
                           options=("--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10",
                                    "--export=ALL,RANK=0,WORLD_SIZE=2"))
    slurm.wait_finished(partial, timeout=300)
    parts = list((tmp_path / "c" / "datasets").glob("*.parts"))
    assert len(parts) == 1 and not list((tmp_path / "c" / "datasets").glob("*/index.json"))
    assert _shards_tokenized(partial.out.read_text(), world=2) == {0: 3}  # train shards 0 and 2, val shard 0
    # resumed as a 3-task job array (a different split of the work): only the missing shards are tokenized
    array = slurm.sbatch("prepare.sbatch", *common,
                         options=("--array=0-2", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10"))
    slurm.wait_finished(array, timeout=300)
    _wait_for_array(slurm, array, tmp_path / "c")
    reference = slurm.sbatch("prepare.sbatch", *common[:-1], f"data.cache_dir={tmp_path / 'ref'}",
                             options=("--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10"))
    slurm.wait_finished(reference, timeout=300)
    assert _digests(_prepared(tmp_path / "c")) == _digests(_prepared(tmp_path / "ref"))
    # the array's three tasks (each its own job id, hence its own slurm-<id>.out) redid nothing: only train shard 1
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    tokenized = _shards_tokenized(logs, world=3)  # (a task that starts after the index is written logs nothing)
    assert tokenized.get(1) == 1 and sum(tokenized.values()) == 1, logs[-4000:]


def _wait_for_array(slurm, job, cache, timeout=300):
    """scontrol merges an array's tasks into one record: wait until none of them is queued or running."""
    import subprocess
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job.id], capture_output=True, text=True, env=slurm.env)
        if not queued.stdout.strip() and list((cache / "datasets").glob("*/index.json")):
            return
        time.sleep(0.5)
    raise AssertionError(f"array {job.id} did not finish: {queued.stdout}")


def _json_blocks(text: str) -> list[str]:
    blocks, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
            start = i if depth == 1 else start
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                candidate = text[start : i + 1]
                if '"rank"' in candidate:
                    blocks.append(candidate)
    return blocks


def _shards_tokenized(text: str, world: int) -> dict[int, int]:
    """rank -> shards it tokenized, from the log lines 'rank r/world tokenized n shard(s)'."""
    import re

    return {int(r): int(n) for r, n in re.findall(rf"rank (\d+)/{world} tokenized (\d+) shard", text)}
