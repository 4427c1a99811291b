"""Training on a weighted mixture: per-source val loss and its weighted total, epochs per source in the summary and
the log, exact resume, and DDP/FSDP at equal global batch matching one process."""

from __future__ import annotations

import json
import subprocess

import pytest

from gptframe.config import to_typed
from gptframe.training.run import run_training
from tests.conftest import REPO, TINY_RUN, compose
from tests.integration.test_distributed import CPU, TOLERANCE, _env

WEIGHTS = {"plays": 3.0, "sonnets": 1.0}


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory, shakespeare_text):
    """Two text sources cut from Tiny Shakespeare (one a JSON-lines file), so runs need nothing outside the repo."""
    root = tmp_path_factory.mktemp("mix")
    (root / "plays.txt").write_text(shakespeare_text[:300_000], encoding="utf-8")
    lines = [line for line in shakespeare_text[300_000:500_000].split("\n\n") if line.strip()]
    (root / "sonnets.jsonl").write_text("".join(json.dumps({"body": line}) + "\n" for line in lines))
    return root


def _mixture(root) -> list[str]:
    return [
        "data.path=null",
        f"data.sources=[{{name: plays, path: '{root / 'plays.txt'}', weight: {WEIGHTS['plays']}}},"
        f"{{name: sonnets, path: '{root / 'sonnets.jsonl'}', text_column: body, weight: {WEIGHTS['sonnets']}}}]",
    ]


def _train(run_dir, cache_dir, root, *overrides):
    cfg = compose([*TINY_RUN, f"data.cache_dir={cache_dir}", *_mixture(root), *overrides])
    return run_training(to_typed(cfg), run_dir, cfg)


def test_mixture_reports_val_loss_per_source_and_epochs(tmp_path, cache_dir, two_corpora, caplog):
    caplog.set_level("INFO")
    summary = _train(tmp_path, cache_dir, two_corpora, "trainer.max_steps=30", "trainer.val_check_interval=15")
    per_source = {name: summary[f"val_loss_{name}"] for name in WEIGHTS}
    weighted = sum(WEIGHTS[n] * per_source[n] for n in WEIGHTS) / sum(WEIGHTS.values())
    assert summary["val_loss"] == pytest.approx(weighted, rel=1e-5)
    assert per_source["plays"] != pytest.approx(per_source["sonnets"], abs=1e-4)  # really scored apart
    sources = summary["data_sources"]
    assert sum(s["tokens"] for s in sources.values()) == 30 * 8 * 32  # steps x batch x block
    assert sources["plays"]["tokens"] / (30 * 8 * 32) == pytest.approx(0.75, abs=0.01)
    for s in sources.values():
        assert s["epochs"] == pytest.approx(s["tokens"] / s["train_tokens"])
    assert "data: after 30 steps, epochs of each source: plays" in caplog.text
    header = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/loss", "val/loss_plays", "val/loss_sonnets"} <= set(header)


def test_mixture_stop_and_resume_matches_an_uninterrupted_run(tmp_path, cache_dir, two_corpora):
    common = ["model.dropout=0.1", "task.lr_decay_steps=40", "trainer.val_check_interval=20"]
    full = _train(tmp_path / "full", cache_dir, two_corpora, *common, "trainer.max_steps=40")
    _train(tmp_path / "split", cache_dir, two_corpora, *common, "trainer.max_steps=20")
    resumed = _train(tmp_path / "split", cache_dir, two_corpora, *common, "trainer.max_steps=40", "resume=auto")
    for key in ("val_loss", "train_loss", "val_loss_plays", "val_loss_sonnets"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key
    assert resumed["data_sources"] == full["data_sources"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_mixture_data_parallel_matches_single_process(tmp_path, cache_dir, two_corpora, strategy):
    steps = ["model.dropout=0.0", "trainer.max_steps=20", "trainer.val_check_interval=10", "task.lr_decay_steps=20"]
    single = _train(tmp_path / "single", cache_dir, two_corpora, *steps)
    run_dir = tmp_path / strategy
    cmd = [str(REPO / "launch" / "local.sh"), *TINY_RUN, *_mixture(two_corpora), *steps, *CPU, f"trainer={strategy}",
           "data.batch_size=4", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO, env=_env(NPROC="2"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    parallel = json.loads((run_dir / "summary.json").read_text())
    assert parallel["world_size"] == 2
    for key in ("val_loss", "train_loss", "val_loss_plays", "val_loss_sonnets"):
        assert parallel[key] == pytest.approx(single[key], abs=TOLERANCE), key
    assert parallel["data_sources"] == single["data_sources"]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ("[{name: web, path: PLAYS, weight: -1}]", "data.sources[web].weight must be >= 0, got -1.0"),
        ("[{name: web, path: PLAYS, weight: 0}, {name: wiki, path: PLAYS, weight: 0}]",
         "data.sources: the weights of ['web', 'wiki'] are all zero"),
        ("[{name: web, path: PLAYS}, {name: web, path: PLAYS}]", "data.sources: the name 'web' appears more than once"),
    ],
)
def test_bad_mixture_config_is_one_error_and_exit_2_with_nothing_written(tmp_path, two_corpora, sources, message):
    from tests.conftest import run_cli

    spec = sources.replace("PLAYS", f"'{two_corpora / 'plays.txt'}'")
    res = run_cli("gptframe-prepare", "data.path=null", f"data.sources={spec}", f"data.cache_dir={tmp_path / 'c'}",
                  "tokenizer=char")
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "c").exists()
