"""Every CLI on bad input, table-driven: one line `<program>: error: ...` naming the problem, exit code 2, nothing
left on disk (no run dir, no cache entry, no export dir). Then a seeded fuzz of wrong-typed and out-of-range
overrides drawn from the config schema: never a traceback, never a hang.

Cases run in-process where the entry point allows it (Hydra config errors, gptframe-generate, gptframe-export, the
pipeline check); the ones that need a real start (data, tokenizer, checkpoints, launch/pipeline.sh) run as
subprocesses in the `slow` part.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptframe import pipeline
from gptframe.cli import check as check_cli
from gptframe.cli import export as export_cli
from gptframe.cli import generate as generate_cli
from gptframe.cli import prepare as prepare_cli
from gptframe.cli import train as train_cli
from gptframe.config import TrainConfig
from tests.conftest import BIN, REPO, TINY_RUN, run_cli

FAST = [*TINY_RUN, "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.eval_batches=1",
        "trainer.final_eval_batches=1"]


@dataclasses.dataclass
class Outcome:
    code: int | None
    err: str


def _in_process(main, program: str, argv: list[str], monkeypatch, capsys, hydra: bool) -> Outcome:
    """Run a CLI's main() here; handlers it added to the root logger (a run's train.log) are removed after."""
    handlers = list(logging.getLogger().handlers)
    monkeypatch.setattr(sys, "argv", [program, *argv])
    try:
        main() if hydra else main(argv)
        return Outcome(None, capsys.readouterr().err)  # it ran: the input was valid
    except SystemExit as e:
        return Outcome(e.code, capsys.readouterr().err)
    finally:
        for handler in set(logging.getLogger().handlers) - set(handlers):
            logging.getLogger().removeHandler(handler)
            handler.close()


def _assert_one_clear_line(outcome: Outcome, program: str, fragment: str) -> None:
    assert outcome.code == 2, outcome.err[-2000:]
    assert "Traceback" not in outcome.err, outcome.err[-3000:]
    errors = [line for line in outcome.err.splitlines() if line.startswith(f"{program}: error:")]
    assert len(errors) == 1 and outcome.err.strip().splitlines()[-1] == errors[0], outcome.err[-2000:]
    assert fragment in errors[0], errors[0]


# --------------------------------------------------------------------------------------------------------------------
# gptframe-train and gptframe-prepare: config errors (in-process)

TRAIN_CONFIG = {
    "typo": (["model.n_layr=3"], "Key 'n_layr' not in 'GPTModelConfig' (key: model.n_layr)"),
    "wrong_type_int": (["model.n_layer=three"], "Value 'three' of type 'str' could not be converted to Integer"),
    "wrong_type_bool": (["model.bias=maybe"], "Value 'maybe' is not a valid bool"),
    "unknown_option": (["model=gpt_huge"], "Could not find 'model/gpt_huge'"),
    "unknown_group": (["optimizer=adam"], "Key 'optimizer' not in 'TrainConfig'"),
    "override_syntax": (["model.n_layer=[1"], "no viable alternative at input '[1'"),
    "negative_steps": (["trainer.max_steps=-5"], "trainer.max_steps must be >= 1, got -5"),
    "bad_precision": (["trainer.precision=fp8"], "trainer.precision must be"),
    "bad_strategy": (["trainer.strategy=horovod"], "trainer.strategy must be one of"),
    "fsdp_fp16": (["trainer=fsdp", "trainer.precision=16-mixed"], "not supported with trainer=fsdp"),
    "zero_devices": (["trainer.devices=0"], "trainer.devices must be an int >= 1"),
    "keep_zero_checkpoints": (["trainer.keep_last_checkpoints=0"], "trainer.keep_last_checkpoints must be >= 1 or null"),
    "nonfinite_policy": (["trainer.nonfinite_policy=ignore"], "trainer.nonfinite_policy must be stop|skip"),
    "negative_clip": (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be >= 0"),
    "zero_lr": (["task.lr=0"], "task.lr > 0"),
    "nan_lr": (["task.lr=nan"], "need 0 <= task.min_lr <= task.lr and task.lr > 0, got lr=nan"),
    "zero_eps": (["task.eps=0"], "task.eps must be > 0"),
    "one_beta": (["task.betas=[0.9]"], "task.betas must be two numbers in [0, 1)"),
    "mask_prob": (["task=mlm", "task.mask_prob=1.5"], "task.mask_prob must be in [0, 1]", ["model=bert_mini"]),
    "heads_do_not_divide": (["model.n_embd=65"], "model.n_embd=65 must be divisible by model.n_head=2"),
    "dropout_range": (["model.dropout=1.0"], "model.dropout must be in [0, 1)"),
    "batch_size": (["data.batch_size=0"], "data.batch_size must be >= 1, got 0"),
    "val_fraction": (["data.val_fraction=1.5"], "data.val_fraction must be in (0, 1)"),
    "tokenizer_kind": (["tokenizer.kind=bytes"], "tokenizer.kind must be 'char', 'sentencepiece' or 'wordpiece'"),
    "tokenizer_vocab": (["tokenizer=sentencepiece", "tokenizer.vocab_size=4"], "tokenizer.vocab_size must be >= 8"),
    "logger_kind": (["logger.kind=mlflow"], "logger.kind must be csv|tensorboard|wandb"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CONFIG))
def test_train_config_errors(case, tmp_path, monkeypatch, capsys):
    overrides, fragment, *base = TRAIN_CONFIG[case]
    run_dir = tmp_path / "run"
    base = base[0] if base else FAST  # a case that got past its check would train 2 tiny steps, not the default job
    outcome = _in_process(train_cli.main, "gptframe-train", [*base, f"hydra.run.dir={run_dir}", *overrides],
                          monkeypatch, capsys, hydra=True)
    _assert_one_clear_line(outcome, "gptframe-train", fragment)
    assert not run_dir.exists()


PREPARE_CONFIG = {
    "typo": (["data.pathh=x"], "Key 'pathh' not in 'DataConfig'"),
    "format": (["data.format=xml"], "data.format must be one of"),
}


@pytest.mark.parametrize("case", sorted(PREPARE_CONFIG))
def test_prepare_config_errors(case, tmp_path, monkeypatch, capsys):
    overrides, fragment = PREPARE_CONFIG[case]
    outcome = _in_process(prepare_cli.main, "gptframe-prepare", [f"data.cache_dir={tmp_path / 'cache'}", *overrides],
                          monkeypatch, capsys, hydra=True)
    _assert_one_clear_line(outcome, "gptframe-prepare", fragment)
    assert not (tmp_path / "cache").exists()


def test_prepare_missing_corpus_leaves_no_cache_entry(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    outcome = _in_process(prepare_cli.main, "gptframe-prepare", [f"data.cache_dir={cache}", "data.path=/no/corpus.txt"],
                          monkeypatch, capsys, hydra=True)
    _assert_one_clear_line(outcome, "gptframe-prepare", "/no/corpus.txt")
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------------------------------------------------
# gptframe-generate, gptframe-export, gptframe.pipeline (in-process)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A real GPT checkpoint and broken neighbours of it: truncated, crafted, a dir without config.json, an HF dir of
    an unsupported architecture, a config.json that is not JSON."""
    from gptframe.config import to_typed
    from gptframe.training.run import run_training
    from tests.conftest import compose

    root = tmp_path_factory.mktemp("files")
    cfg = compose([*FAST, f"data.cache_dir={root / 'cache'}"])
    run_training(to_typed(cfg), root / "run", cfg)
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    truncated = root / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:4000])
    crafted = root / "crafted.ckpt"
    torch.save({"gptframe": {"x": os.system}, "state_dict": {}}, crafted)
    (root / "empty_dir").mkdir()
    llama = root / "mixtral"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}))
    not_json = root / "not_json"
    not_json.mkdir()
    (not_json / "config.json").write_text("{not json")
    not_a_file = root / "a_file"
    not_a_file.write_text("x")
    return {"ckpt": ckpt, "truncated": truncated, "crafted": crafted, "empty_dir": root / "empty_dir",
            "llama": llama, "not_json": not_json, "a_file": not_a_file}


GENERATE = {
    "unknown_key": (["ckpt={ckpt}", "max_new_tokns=5"], "unknown argument 'max_new_tokns'"),
    "not_key_value": (["ckpt={ckpt}", "hello"], "expected key=value, got 'hello'"),
    "wrong_type": (["ckpt={ckpt}", "top_k=many"], "top_k='many'"),
    "top_p_range": (["ckpt={ckpt}", "top_p=1.5"], "top_p must be in (0, 1]"),
    "zero_temperature": (["ckpt={ckpt}", "temperature=0"], "temperature must be > 0 when sampling"),
    "missing_ckpt": (["ckpt=/no/such.ckpt"], "checkpoint not found: /no/such.ckpt"),
    "no_ckpt_given": (["prompt=hi"], "ckpt"),
    "truncated": (["ckpt={truncated}"], "is truncated or not a torch checkpoint"),
    "crafted": (["ckpt={crafted}"], "refused"),
    "dir_without_config": (["ckpt={empty_dir}"], "is not a model directory: no config.json"),
    "unsupported_arch": (["ckpt={llama}"], "unsupported architecture MixtralForCausalLM"),
    "prompt_outside_vocab": (["ckpt={ckpt}", "prompt=☃"], "not in the char vocabulary"),
}

EXPORT = {
    "missing_out": (["ckpt={ckpt}"], "out"),
    "out_is_a_file": (["ckpt={ckpt}", "out={a_file}"], "exists and is not a directory"),
    "unknown_key": (["ckpt={ckpt}", "out={tmp}/x", "format=onnx"], "unknown argument 'format'"),
    "bad_head": (["ckpt={ckpt}", "out={tmp}/x", "head=masked_lm"], "head"),
    "config_not_json": (["ckpt={not_json}", "out={tmp}/x"], "cannot be read as JSON"),
    "crafted": (["ckpt={crafted}", "out={tmp}/x"], "refused"),
}


def _fill(args: list[str], files: dict[str, Path], tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, **files) for a in args]


@pytest.mark.parametrize("case", sorted(GENERATE))
def test_generate_errors(case, files, tmp_path, monkeypatch, capsys):
    args, fragment = GENERATE[case]
    outcome = _in_process(generate_cli.main, "gptframe-generate", _fill(args, files, tmp_path), monkeypatch, capsys,
                          hydra=False)
    _assert_one_clear_line(outcome, "gptframe-generate", fragment)


@pytest.mark.parametrize("case", sorted(EXPORT))
def test_export_errors(case, files, tmp_path, monkeypatch, capsys):
    args, fragment = EXPORT[case]
    outcome = _in_process(export_cli.main, "gptframe-export", _fill(args, files, tmp_path), monkeypatch, capsys,
                          hydra=False)
    _assert_one_clear_line(outcome, "gptframe-export", fragment)
    assert not (tmp_path / "x").exists()


def test_python_pipeline_errors(files):
    from gptframe.errors import UserInputError

    cases = [
        (lambda: pipeline("translation", model=str(files["ckpt"])), ValueError, "unknown pipeline task 'translation'"),
        (lambda: pipeline("text-generation", model="/no/model"), UserInputError, "checkpoint not found: /no/model"),
        (lambda: pipeline("fill-mask", model=str(files["ckpt"])), UserInputError, "fill-mask needs a model trained for task=mlm, but"),
        (lambda: pipeline("text-generation", model=str(files["crafted"])), UserInputError, "refused"),
        (lambda: pipeline("text-generation", model=str(files["llama"])), UserInputError, "unsupported architecture"),
    ]
    for call, kind, fragment in cases:
        with pytest.raises(kind) as info:
            call()
        assert fragment in str(info.value) and len(str(info.value).splitlines()) == 1


# --------------------------------------------------------------------------------------------------------------------
# launch/pipeline.sh's check of both stages (in-process), then the real script and gptframe-train starts (slow)

PIPELINE_CHECK = {
    "finetune_typo": (["task=classification", "trainer.max_epocs=3"], "Key 'max_epocs' not in 'TrainerConfig'"),
    "pretrain_value": (["model.n_layer=0"], "model.n_layer must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", sorted(PIPELINE_CHECK))
def test_pipeline_stage_check(case, monkeypatch, capsys):
    overrides, fragment = PIPELINE_CHECK[case]
    outcome = _in_process(check_cli.main, "pipeline: x", ["pipeline: x", *overrides], monkeypatch, capsys, hydra=False)
    _assert_one_clear_line(outcome, "pipeline: x", fragment)


PIPELINE_SCRIPT = {
    "no_arguments": ([], "usage:"),
    "unknown_recipe": (["roberta"], "pipeline: unknown recipe 'roberta' (expected one of: bert gpt gpt_sft llama)"),
    "not_key_value": (["gpt", "fast"], "pipeline: 'fast' is not KEY=VALUE"),
    "finetune_typo": (["gpt", "finetune.trainer.max_epocs=3"], "pipeline: finetune: error: Could not override"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PIPELINE_SCRIPT))
def test_pipeline_script_errors(case, tmp_path):
    args, fragment = PIPELINE_SCRIPT[case]
    out = tmp_path / "pipe"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    extra = [f"pipeline.dir={out}"] if args else []
    res = subprocess.run(["bash", "launch/pipeline.sh", *args, *extra], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=120)
    assert res.returncode == 2 and fragment in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not out.exists()


def _labeled(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_train_start_errors(files, tmp_path):
    """Inputs only a real start can reject: data, tokenizer, checkpoints, model dirs. Batched two at a time."""
    from concurrent.futures import ThreadPoolExecutor

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ok\n" * 50 + b"\xff\xfe")
    train = _labeled(tmp_path / "train.jsonl", [{"text": "a b", "label": "x"}, {"text": "c d", "label": "y"}])
    unseen = _labeled(tmp_path / "unseen.jsonl", [{"text": "e", "label": "z"}])
    cases = {
        "missing_corpus": (["data.path=/no/corpus.txt"], "no such file or directory: /no/corpus.txt"),
        "empty_corpus": ([f"data.path={empty}"], "is empty"),
        "binary_corpus": ([f"data.path={binary}"], "is not UTF-8 text"),
        "vocab_too_small": (["model.vocab_size=10"], "has 65 tokens but model.vocab_size=10"),
        "missing_tokenizer": (["tokenizer=sentencepiece", "tokenizer.path=/no/tok.model"], "/no/tok.model"),
        "resume_missing": (["resume=/no/last.ckpt"], "checkpoint not found: /no/last.ckpt"),
        "resume_truncated": ([f"resume={files['truncated']}"], "is truncated"),
        "resume_crafted": ([f"resume={files['crafted']}"], "refused"),
        "init_from_unsupported": ([f"model.init_from={files['llama']}"], "unsupported architecture"),
        "init_from_not_json": ([f"model.init_from={files['not_json']}"], "cannot be read as JSON"),
        "block_size": (["data.block_size=64"], "data.block_size=64 exceeds the model's context"),
        "mlm_on_gpt": (["task=mlm"], "task=mlm does not train a GPT model"),
        "classification_paths": (["task=classification", f"model.init_from={files['ckpt']}"],
                                 "task=classification needs data.train_path and data.val_path"),
        "unseen_label": (["task=classification", f"model.init_from={files['ckpt']}", f"data.train_path={train}",
                          f"data.val_path={unseen}"], "labels ['z'] never occur in the training data"),
    }

    def run(name):
        overrides, _ = cases[name]
        cache = tmp_path / f"cache-{name}"
        res = run_cli("gptframe-train", *FAST, f"data.cache_dir={cache}", f"hydra.run.dir={tmp_path / name}",
                      *overrides, timeout=180)
        return name, res

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, sorted(cases)))
    # model.vocab_size is checked against the tokenizer, which is built with the data: that case leaves the
    # complete (reusable) prepared dataset in the cache, never a partial one
    after_prepare = {"vocab_too_small"}
    for name, res in results:
        _assert_one_clear_line(Outcome(res.returncode, res.stderr), "gptframe-train", cases[name][1])
        assert not (tmp_path / name).exists(), name
        cache = tmp_path / f"cache-{name}"
        entries = [p for p in cache.glob("datasets/*") if not p.name.endswith(".lock")] if cache.exists() else []
        assert not [p for p in entries if p.name.startswith(".")], name  # no temporary left
        assert not entries or (name in after_prepare and all((p / "index.json").is_file() for p in entries)), name


# --------------------------------------------------------------------------------------------------------------------
# Seeded fuzz: random wrong-typed and out-of-range values for keys drawn from the schema


def _schema_keys() -> list[tuple[str, type]]:
    """(dotted key, field type) for every scalar field of the training config (model: GPT, task: clm)."""
    from gptframe.config import GPTModelConfig
    from gptframe.tasks.causal_lm import CausalLMTaskConfig

    keys = []
    groups = {f.name: f for f in dataclasses.fields(TrainConfig)}
    schemas = {"model": GPTModelConfig, "task": CausalLMTaskConfig}
    for name, field in groups.items():
        schema = schemas.get(name) or (field.default_factory if field.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(schema):
            keys += [(f"{name}.{f.name}", f.type) for f in dataclasses.fields(schema)
                     if f.name not in ("name", "arch", "cache_dir")]  # cache_dir=abc would be valid, under the cwd
        elif name != "resume":
            keys.append((name, field.type))
    return keys


WRONG_VALUES = ["abc", "[1,2]", "{a: 1}", "-1", "0", "-7.5", "nan", "inf", "-inf", "1e-12", "''"]


def _with_alarm(seconds: int):
    def on_alarm(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: a hang")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)


def test_fuzzed_overrides_never_give_a_traceback_or_hang(tmp_path, monkeypatch, capsys, cache_dir):
    rng = random.Random(20261129)
    keys = _schema_keys()
    assert len(keys) > 50
    accepted = []
    for i in range(60):
        overrides = [f"{key}={rng.choice(WRONG_VALUES)}" for key, _ in rng.sample(keys, rng.choice([1, 1, 2]))]
        run_dir = tmp_path / f"run{i}"
        args = [*FAST, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", *overrides]
        _with_alarm(60)
        try:
            outcome = _in_process(train_cli.main, "gptframe-train", args, monkeypatch, capsys, hydra=True)
        finally:
            signal.alarm(0)
        assert "Traceback" not in outcome.err, (overrides, outcome.err[-3000:])
        if outcome.code is None:  # valid after all: it trained to the end
            accepted.append(overrides)
            continue
        assert outcome.code == 2, (overrides, outcome.err[-2000:])
        errors = [line for line in outcome.err.splitlines() if line.startswith("gptframe-train: error:")]
        assert len(errors) == 1, (overrides, outcome.err[-2000:])
        assert not run_dir.exists() or (run_dir / "checkpoints").exists(), overrides
    print(f"fuzz: {60 - len(accepted)} rejected with one line, {len(accepted)} valid and trained: {accepted}")
    assert len(accepted) < 20  # most draws are invalid; the valid ones ran to completion without a traceback
