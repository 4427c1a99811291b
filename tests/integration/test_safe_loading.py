"""A crafted pickle handed to any entry point that loads a file is refused: one clear line, exit code 2, and the
code in it never runs (its marker file is never created). Legacy pickled checkpoints get a convert command."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gptframe import pipeline
from gptframe.cli import export as export_cli
from gptframe.cli import generate as generate_cli
from gptframe.config import to_typed
from gptframe.errors import CheckpointError
from gptframe.loading import load_model
from gptframe.training.checkpoint_io import SafeCheckpointIO
from gptframe.training.run import run_training
from gptframe.training.safe_loading import main as safe_loading_main
from tests.conftest import TINY_RUN, compose, run_cli

SMALL = [*TINY_RUN, "trainer.max_steps=6", "trainer.val_check_interval=3"]


class RunsCode:
    """Unpickling this runs `touch marker` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose([*SMALL, f"data.cache_dir={cache_dir}"])
    run_training(to_typed(cfg), run_dir, cfg)
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture()
def marker(tmp_path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture()
def crafted(trained, tmp_path, marker) -> Path:
    """A real checkpoint with one object that runs code hidden among the callback states."""
    ckpt = torch.load(trained, weights_only=True)
    ckpt["callbacks"]["Innocent"] = {"state": RunsCode(marker)}
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == ["posix.system"]
    return path


def _sharded_copy(ckpt_file: Path, out: Path) -> Path:
    """The layout Lightning's ModelParallelStrategy writes: .distcp shards + .metadata index, the rest in meta.pt."""
    import torch.distributed.checkpoint as dcp

    ckpt = torch.load(ckpt_file, weights_only=True)
    dcp.save({"state_dict": ckpt.pop("state_dict")}, checkpoint_id=out, no_dist=True)
    torch.save(ckpt, out / "meta.pt")
    return out


def _one_line_refusal(err: str, path: Path) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "refused" in lines[0] and str(path) in lines[0] and "Traceback" not in err


def _run_main(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_generate_export_and_pipeline_refuse_a_crafted_checkpoint(crafted, marker, tmp_path, capsys):
    _one_line_refusal(_run_main(generate_cli.main, [f"ckpt={crafted}"], capsys), crafted)
    out = tmp_path / "export"
    _one_line_refusal(_run_main(export_cli.main, [f"ckpt={crafted}", f"out={out}"], capsys), crafted)
    assert not out.exists()
    with pytest.raises(CheckpointError, match="refused: it holds pickled code or objects \\(posix.system\\)"):
        pipeline("text-generation", model=str(crafted))
    with pytest.raises(CheckpointError, match="refused"):  # what Lightning reads a resume checkpoint through
        SafeCheckpointIO().load_checkpoint(crafted)
    assert not marker.exists()


@pytest.mark.slow
def test_train_refuses_a_crafted_checkpoint_for_resume_and_init_from(crafted, marker, tmp_path, cache_dir):
    for i, override in enumerate([f"resume={crafted}", f"model.init_from={crafted}"]):
        run_dir = tmp_path / f"run{i}"
        res = run_cli("gptframe-train", *SMALL, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", override)
        assert res.returncode == 2, res.stderr[-2000:]
        assert res.stderr.strip().splitlines()[-1].startswith("gptframe-train: error: checkpoint")
        assert "refused" in res.stderr and "Traceback" not in res.stderr
        assert not run_dir.exists()
    assert not marker.exists()


def test_sharded_checkpoint_with_crafted_meta_or_index_is_refused(trained, marker, tmp_path, capsys):
    good = _sharded_copy(trained, tmp_path / "good.ckpt")
    assert load_model(good).task == "clm"  # the copy is a real sharded checkpoint
    meta = shutil.copytree(good, tmp_path / "meta.ckpt")
    torch.save({"gptframe": RunsCode(marker)}, meta / "meta.pt")
    index = shutil.copytree(good, tmp_path / "index.ckpt")
    import pickle

    (index / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))  # torch's reader would pickle.load this
    for path, name in ((meta, "meta.pt"), (index, ".metadata")):
        err = _run_main(generate_cli.main, [f"ckpt={path}"], capsys)
        _one_line_refusal(err, path)
        assert name in err
        err = _run_main(export_cli.main, [f"ckpt={path}", f"out={tmp_path / 'out'}"], capsys)
        _one_line_refusal(err, path)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_hf_directory_with_a_crafted_pytorch_model_bin_is_refused(trained, marker, tmp_path, capsys):
    from gptframe.interop.hf import export_model

    hf_dir = export_model(load_model(trained), tmp_path / "hf")
    capsys.readouterr()  # the export's progress bar
    (hf_dir / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": RunsCode(marker)}, hf_dir / "pytorch_model.bin")
    _one_line_refusal(_run_main(generate_cli.main, [f"ckpt={hf_dir}"], capsys), hf_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused"):
        pipeline("text-generation", model=str(hf_dir))
    assert not marker.exists()


def test_legacy_pickled_checkpoint_is_refused_with_a_convert_command_that_works(trained, tmp_path, cache_dir, capsys):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["gptframe"]["rng"]["numpy"] = np.random.get_state()  # what early gptframe versions stored: numpy arrays
    legacy = tmp_path / "legacy.ckpt"
    torch.save(ckpt, legacy)
    with pytest.raises(CheckpointError, match=f"convert {legacy} NEW.ckpt"):
        load_model(legacy)
    converted = tmp_path / "converted.ckpt"
    safe_loading_main(["convert", str(legacy), str(converted)])
    assert capsys.readouterr().out.strip() == str(converted)
    assert load_model(converted).task == "clm"
    cfg = compose([*SMALL, "trainer.max_steps=8", f"data.cache_dir={cache_dir}", f"resume={converted}"])
    summary = run_training(to_typed(cfg), tmp_path / "resumed", cfg)  # the RNG state restores from the tensor
    assert summary["step"] == 8 and np.isfinite(summary["val_loss"])
