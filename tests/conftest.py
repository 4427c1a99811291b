"""Shared fixtures: small corpora, a per-session data cache, and helpers to compose configs and run the CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipelines import TINY_SHAKESPEARE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# tests/cluster needs a running SLURM cluster: `make test-cluster` runs it (`pytest tests/cluster`), `pytest` does not.
collect_ignore = ["cluster"]


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    return TINY_SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One data cache for the session: tests that prepare the same corpus reuse the shards."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def small_corpus(tmp_path, shakespeare_text) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(shakespeare_text[:60_000], encoding="utf-8")
    return path


def compose(overrides: list[str]):
    """The config gptframe-train would run with these overrides (Hydra's compose API, same conf/ tree)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from gptframe.cli.common import config_dir
    from gptframe.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run_cli(program: str, *args: str, timeout: int = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [str(BIN / program), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=env
    )


# A tiny char-level GPT that trains in a few seconds on CPU.
TINY_RUN = [
    "tokenizer=char",
    "model=gpt_nano",
    "model.n_layer=2",
    "model.n_embd=64",
    "model.n_head=2",
    "model.block_size=32",
    "data.batch_size=8",
    "trainer.max_steps=40",
    "trainer.val_check_interval=20",
    "trainer.eval_batches=4",
    "trainer.final_eval_batches=20",
    "trainer.log_every_n_steps=5",
    "trainer.enable_progress_bar=false",
    "task.warmup_steps=5",
]


# The same run with a tiny Llama: grouped-query attention (2 KV heads for 4), SwiGLU, rotary positions.
TINY_LLAMA = [
    *TINY_RUN[:1],
    "model=llama_micro",
    "model.n_layer=2",
    "model.n_embd=64",
    "model.n_head=4",
    "model.n_kv_head=2",
    "model.intermediate_size=96",
    "model.block_size=32",
    *TINY_RUN[6:],
]


# A tiny BERT with a small WordPiece vocabulary for masked-LM runs of a few seconds.
TINY_BERT = [
    "tokenizer=wordpiece",
    "tokenizer.vocab_size=400",
    "model=bert_mini",
    "model.num_hidden_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=2",
    "model.intermediate_size=128",
    "model.max_position_embeddings=64",
    "task=mlm",
    "task.warmup_steps=5",
    "task.lr=3e-3",
    "data.batch_size=16",
    "trainer.max_steps=100",
    "trainer.val_check_interval=50",
    "trainer.eval_batches=4",
    "trainer.final_eval_batches=8",
    "trainer.log_every_n_steps=5",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="session")
def speaker_task(tmp_path_factory) -> Path:
    """The bundled Shakespeare speaker task (train.jsonl, val.jsonl, pretrain.txt, stats.json)."""
    from data_pipelines.downstream import shakespeare_speakers

    out = tmp_path_factory.mktemp("speakers") / "task"
    shakespeare_speakers.write(out)
    return out
