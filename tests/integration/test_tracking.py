"""Experiment tracking through real runs: W&B offline (read back from its .wandb file), TensorBoard, bad input."""

from __future__ import annotations

import re

import pytest
from hydra.errors import ConfigCompositionException

from gptframe.config import to_typed
from gptframe.training.loggers import RUN_ID_FILE
from gptframe.training.run import run_training
from tests.conftest import TINY_BERT, TINY_RUN, compose, run_cli
from tests.wandb_offline import offline_runs

FAKE_KEY = "0123456789abcdef0123456789abcdef0f1e2d3c"  # 40 characters, the shape of a W&B API key


@pytest.fixture()
def no_wandb_credentials(tmp_path, monkeypatch):
    """A machine with no W&B API key: no WANDB_API_KEY, and a HOME without ~/.netrc or wandb settings."""
    import wandb

    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_CONFIG_DIR",
                "WANDB_BASE_URL", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    yield home
    wandb.teardown()  # also after a failure: wandb keeps the settings of its first run per process


def _train(run_dir, cache_dir, *overrides, base=TINY_RUN):
    import wandb

    cfg = compose([*base, f"data.cache_dir={cache_dir}", *overrides])
    summary = run_training(to_typed(cfg), run_dir, cfg)
    assert wandb.run is None  # the run finished its W&B run: nothing leaks into the next one in this process
    wandb.teardown()  # waits for wandb's service to close the run's files (finish() can return before the last write)
    return summary


def test_wandb_offline_run_records_metrics_config_samples_and_resumes_the_same_run(
    tmp_path, cache_dir, no_wandb_credentials
):
    run_dir = tmp_path / "run"
    common = ["logger=wandb", "name=tracked", "logger.tags=[tiny,gpt]", "logger.group=tests", "model.dropout=0.1"]
    tracked = _train(run_dir, cache_dir, *common, "trainer.max_steps=40")
    # sampling at validation uses its own RNG: dropout draws the same masks as in a run without W&B
    plain = _train(tmp_path / "csv", cache_dir, "model.dropout=0.1", "trainer.max_steps=40")
    assert (tracked["train_loss"], tracked["val_loss"]) == (plain["train_loss"], plain["val_loss"])
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    (first,) = offline_runs(run_dir)  # offline: no API key is configured
    assert first.directory.name.endswith(f"-{run_id}") and first.run_id == run_id
    assert (first.project, first.display_name, first.group, first.tags) == ("gptframe", "tracked", "tests", ["tiny", "gpt"])
    # the resolved run config, with the resolved model config Lightning logs beside it
    assert first.config["model"]["n_layer"] == 2 and first.config["trainer"]["max_steps"] == 40
    assert first.config["model_config"]["vocab_size"] == 65 and "run_config" not in first.config
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/tokens_per_s_per_device",
                "val/loss", "val/perplexity"):
        assert first.rows_with(key), key
    assert len(first.rows_with("val/loss")) == 3  # two validations during fit, the final evaluation
    # a samples table at each validation during fit: 4 prompts from the validation split and their continuations
    tables = first.rows_with("samples/generations")
    assert len(tables) == 2 and all(row["samples/generations"]["_type"] == "table-file" for row in tables)
    table = first.table(tables[-1], "samples/generations")
    assert table["columns"] == ["step", "prompt", "continuation"] and len(table["data"]) == 4
    assert all(step == 40 and prompt and len(text) > 0 for step, prompt, text in table["data"])

    # resume=auto with more steps: a second offline file of the same W&B run, continuing from the checkpoint
    _train(run_dir, cache_dir, *common, "trainer.max_steps=60")
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    _, second = offline_runs(run_dir)
    assert second.run_id == run_id and second.directory.name.endswith(f"-{run_id}") and second.resumed
    steps = [row["trainer/global_step"] for row in second.rows_with("train/loss")]
    assert steps and min(steps) > 40 and max(steps) == 59
    assert [t["samples/generations"]["_type"] for t in second.rows_with("samples/generations")] == ["table-file"]


def test_bert_run_logs_a_fill_mask_table(tmp_path, cache_dir, no_wandb_credentials):
    run_dir = tmp_path / "run"
    _train(run_dir, cache_dir, "logger=wandb", "trainer.max_steps=20", "trainer.val_check_interval=10",
           "logger.num_samples=3", base=TINY_BERT)
    (run,) = offline_runs(run_dir)
    assert run.config["task"]["name"] == "mlm"
    assert run.rows_with("val/mlm_accuracy") and not run.rows_with("samples/generations")
    tables = run.rows_with("samples/fill_mask")
    assert len(tables) == 2
    table = run.table(tables[-1], "samples/fill_mask")
    assert table["columns"] == ["step", "text", "answer", *(f"prediction_{i}" for i in range(1, 6))]
    assert len(table["data"]) == 3
    for step, text, answer, *predictions in table["data"]:
        assert step == 20 and text.count("[MASK]") == 1 and answer.isalnum()
        scores = [float(re.fullmatch(r".+ \((\d\.\d\d)\)", p).group(1)) for p in predictions]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.01


def test_api_key_never_reaches_the_run_dir(tmp_path, cache_dir, no_wandb_credentials, monkeypatch):
    # the CLI in a fresh process (wandb reads its environment once per process): a key is configured, but the run is
    # forced offline; everything the run writes (config.yaml, .hydra/, train.log, wandb/) must not hold the key
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run_dir = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_RUN, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
                  "trainer.max_steps=20", "logger=wandb", "logger.mode=offline", "logger.tags=[x]")
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = offline_runs(run_dir)
    assert run.tags == ["x"] and run.rows_with("train/loss") and run.rows_with("samples/generations")
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "train.log", "overrides.yaml", f"run-{run.run_id}.wandb", "debug.log"} <= names
    for path in files + [p for p in no_wandb_credentials.rglob("*") if p.is_file()]:  # and wandb's logs in HOME
        assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert FAKE_KEY not in res.stdout + res.stderr


def test_a_key_in_a_config_value_is_scrubbed_from_config_and_checkpoints(tmp_path, cache_dir, monkeypatch):
    # a config value that resolves to the key (here from the environment) must not be written in clear either
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run_dir = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_RUN, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
                  "trainer.max_steps=10", "logger=csv", "logger.group=${oc.env:WANDB_API_KEY}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "group: '***'" in (run_dir / "config.yaml").read_text()
    for path in [p for p in run_dir.rglob("*") if p.is_file()]:  # config.yaml, checkpoints (run_config), logs
        assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_tensorboard_run_writes_event_files(tmp_path, cache_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path, cache_dir, "logger=tensorboard", "trainer.max_steps=20", "trainer.val_check_interval=10")
    version = tmp_path / "logs" / "version_0"
    assert list(version.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(version))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/loss"} <= set(scalars) and "hp_metric" not in scalars
    assert [e.step for e in events.Scalars("train/loss")] == [4, 9, 14, 19]


def test_unknown_logger_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="projekt"):
        compose(["logger=wandb", "logger.projekt=x"])


def test_bad_logger_mode_exits_with_a_clear_error(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_RUN, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
                  "logger=wandb", "logger.mode=bogus")
    err = res.stderr + res.stdout
    assert res.returncode == 2, err[-2000:]
    assert "logger.mode must be auto|online|offline|disabled, got 'bogus'" in err and "Traceback" not in err
    assert not run_dir.exists()
