"""W&B plumbing without a run: online/offline choice, the run id file under concurrent ranks, secret scrubbing."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from gptframe.errors import ConfigError
from gptframe.training.loggers import RUN_ID_FILE, resolve_wandb_mode, scrub_secrets, wandb_run_id


@pytest.fixture()
def home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_auto_mode_is_online_only_with_an_api_key(home):
    env = {"HOME": str(home)}
    assert resolve_wandb_mode("auto", env) == ("offline", "no W&B API key configured")
    assert resolve_wandb_mode("auto", {**env, "WANDB_API_KEY": "k" * 40})[0] == "online"
    assert resolve_wandb_mode("auto", {**env, "WANDB_MODE": "dryrun", "WANDB_API_KEY": "k" * 40})[0] == "offline"
    assert resolve_wandb_mode("offline", {**env, "WANDB_API_KEY": "k" * 40})[0] == "offline"
    assert resolve_wandb_mode("disabled", env)[0] == "disabled"
    # `wandb login` stores the key in ~/.netrc for the W&B host (or the one WANDB_BASE_URL names)
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert resolve_wandb_mode("auto", env) == ("online", f"API key from {home / '.netrc'}")
    assert resolve_wandb_mode("auto", {**env, "WANDB_BASE_URL": "https://wandb.example.com"})[0] == "offline"
    # or wandb's settings file holds it
    (home / ".netrc").unlink()
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "settings").write_text("[default]\napi_key = " + "k" * 40 + "\n")
    assert resolve_wandb_mode("auto", env)[0] == "online"


def _run_id_in(run_dir, start, results):
    start.wait()
    results.put(wandb_run_id(run_dir))


def test_every_rank_reads_the_one_run_id_created_first(tmp_path):
    run_dir = tmp_path / "run"  # not there yet: the ranks race to create it and its id file
    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(6), ctx.Queue()
    ranks = [ctx.Process(target=_run_id_in, args=(run_dir, start, results)) for _ in range(6)]
    for p in ranks:
        p.start()
    ids = {results.get(timeout=30) for _ in ranks}
    for p in ranks:
        p.join(timeout=30)
    assert len(ids) == 1 and ids == {(run_dir / RUN_ID_FILE).read_text().strip()}
    assert sorted(p.name for p in run_dir.iterdir()) == [RUN_ID_FILE]  # no temporary files left
    assert wandb_run_id(run_dir) in ids  # a later job (resume, requeue) continues that run


def test_a_corrupt_run_id_file_is_a_clear_error(tmp_path):
    (tmp_path / RUN_ID_FILE).write_text("not an id!\n")
    with pytest.raises(ConfigError, match="does not hold a W&B run id"):
        wandb_run_id(tmp_path)


def test_secret_looking_keys_are_scrubbed(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    config = {
        "tokenizer": {"kind": "char", "vocab_size": 65},  # "token" inside a longer name is not a secret
        "generate": {"max_new_tokens": 32},
        "data": {"hf_token": "hf_abc", "path": "/data", "access_token": None},
        "services": [{"api_key": "abc", "url": "https://x"}, {"DB_PASSWORD": "pw", "client_secret": "s"}],
        "note": "key=" + "k" * 40,  # the configured API key inside any value
    }
    assert scrub_secrets(config) == {
        "tokenizer": {"kind": "char", "vocab_size": 65},
        "generate": {"max_new_tokens": 32},
        "data": {"hf_token": "***", "path": "/data", "access_token": None},
        "services": [{"api_key": "***", "url": "https://x"}, {"DB_PASSWORD": "***", "client_secret": "***"}],
        "note": "***",
    }
    assert config["data"]["hf_token"] == "hf_abc"  # a scrubbed copy; the run's own config is untouched
