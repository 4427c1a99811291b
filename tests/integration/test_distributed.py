"""DDP and FSDP2 with real gloo process groups: ranks started by torchrun through launch/local.sh and
launch/multinode.sh (subprocesses, not Lightning's in-process launcher, which would re-run pytest in rank 1).

Parity: at equal global batch (1 process x batch B, or 2 processes x batch B/2) the sampler hands the ranks exactly
the single-process examples, so training differs only in the order of floating-point sums. Stated tolerance:
final val loss and logged train loss within 1e-4 nats/token after 20 steps (observed: ~1e-5).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from gptframe.config import to_typed
from gptframe.training.run import run_training
from tests.conftest import BIN, REPO, TINY_BERT, TINY_LLAMA, TINY_RUN, compose, run_cli

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4
STEPS = ["trainer.max_steps=20", "trainer.val_check_interval=10", "task.lr_decay_steps=20"]
GPT = [*TINY_RUN, "model.dropout=0.0", *STEPS]
# with sequence-length warmup: example lengths follow the global step, so they must agree across world sizes too
BERT = [*TINY_BERT, "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0", *STEPS,
        "task.seq_len_warmup_steps=12", "task.seq_len_warmup_start=16"]
LLAMA = [*TINY_LLAMA, "model.dropout=0.0", *STEPS]
CPU = ["trainer.accelerator=cpu"]


def _single(run_dir: Path, cache_dir: Path, *overrides: str) -> dict:
    cfg = compose([*overrides, f"data.cache_dir={cache_dir}"])
    return run_training(to_typed(cfg), run_dir, cfg)


def _env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}", "HYDRA_FULL_ERROR": "0",
            **extra}


def _launch(run_dir: Path, cache_dir: Path, *overrides: str, nproc: int = 2, check: bool = True):
    cmd = [str(REPO / "launch" / "local.sh"), *overrides, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO, env=_env(NPROC=str(nproc)))
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((run_dir / "summary.json").read_text())


def _assert_same_training(distributed: dict, single: dict) -> None:
    assert distributed["world_size"] == 2 and single["world_size"] == 1
    assert distributed["step"] == single["step"] == 20
    assert distributed["val_loss"] == pytest.approx(single["val_loss"], abs=TOLERANCE)
    assert distributed["train_loss"] == pytest.approx(single["train_loss"], abs=TOLERANCE)


@pytest.fixture(scope="module")
def gpt_single(tmp_path_factory, cache_dir) -> dict:
    """The single-process reference: batch 8, no accumulation."""
    return _single(tmp_path_factory.mktemp("gpt_single"), cache_dir, *GPT, "data.batch_size=8")


def test_ddp_with_gradient_accumulation_matches_single_process(tmp_path, cache_dir):
    # 2 ranks x batch 2 x 2 micro-batches per step vs 1 process x batch 4 x 2
    accumulate = ["trainer.accumulate_grad_batches=2"]
    single = _single(tmp_path / "single", cache_dir, *GPT, *accumulate, "data.batch_size=4")
    ddp = _launch(tmp_path / "ddp", cache_dir, *GPT, *CPU, *accumulate, "trainer=ddp", "data.batch_size=2")
    _assert_same_training(ddp, single)
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "ddp" / "train.log").is_file()


def test_fsdp_stopped_and_resumed_matches_single_process(tmp_path, cache_dir, gpt_single):
    run = tmp_path / "fsdp"
    args = [*GPT, *CPU, "trainer=fsdp", "data.batch_size=4"]
    first = _launch(run, cache_dir, *args, "trainer.max_steps=10")
    assert first["step"] == 10
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and any(last.glob("*.distcp")), "FSDP saves sharded (distributed) checkpoints"
    resumed = _launch(run, cache_dir, *args, "resume=auto")  # continues to max_steps=20
    _assert_same_training(resumed, gpt_single)
    # the sharded checkpoint consolidates into a Hugging Face model
    out = tmp_path / "hf"
    proc = run_cli("gptframe-export", f"ckpt={last}", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory, cache_dir) -> dict:
    """Single-process references at batch 8, one per architecture, computed once."""
    runs = {}

    def get(arch: str) -> dict:
        if arch not in runs:
            runs[arch] = _single(tmp_path_factory.mktemp(f"{arch}_single"), cache_dir, *ARCHS[arch], "data.batch_size=8")
        return runs[arch]

    return get


ARCHS = {"bert": BERT, "llama": LLAMA}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_data_parallel_matches_single_process(tmp_path_factory, cache_dir, single_runs, arch, strategy):
    single = single_runs(arch)
    run = tmp_path_factory.mktemp(f"{arch}_{strategy}")
    distributed = _launch(run, cache_dir, *ARCHS[arch], *CPU, f"trainer={strategy}", "data.batch_size=4")
    _assert_same_training(distributed, single)
    if arch == "bert":
        assert distributed["val_mlm_accuracy"] == pytest.approx(single["val_mlm_accuracy"], abs=1e-3)


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_fsdp_bf16_with_activation_checkpointing_and_compile_trains(tmp_path, cache_dir, gpt_single, single_runs, arch):
    reference = gpt_single if arch == "gpt" else single_runs(arch)
    run = tmp_path / "fsdp_bf16"
    summary = _launch(
        run, cache_dir, *(GPT if arch == "gpt" else LLAMA), *CPU, "trainer=fsdp", "data.batch_size=4", "trainer.precision=bf16-mixed",
        "trainer.activation_checkpointing=true", "trainer.compile=true",
    )
    assert summary["step"] == 20 and summary["precision"].startswith("bf16")
    log = (run / "train.log").read_text()
    for applied in ("activation checkpointing on 2 blocks", "compiled with torch.compile (per block)",
                    "FSDP2 over 2 ranks (2 blocks + root)"):
        assert applied in log
    # bf16 rounding only: close to the fp32 run
    assert summary["val_loss"] == pytest.approx(reference["val_loss"], abs=0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_on_localhost_match_single_process(tmp_path, cache_dir, gpt_single):
    """launch/multinode.sh twice, as node 0 and node 1 of a 2-node job (1 process each) on 127.0.0.1."""
    run = tmp_path / "two_nodes"
    overrides = [*GPT, *CPU, "data.batch_size=4", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run}"]
    common = {"NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "NPROC": "1"}
    nodes = [
        subprocess.Popen(
            [str(REPO / "launch" / "multinode.sh"), *overrides], cwd=REPO, env=_env(**common, NODE_RANK=str(rank)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    _assert_same_training(summary, gpt_single)
    assert summary["num_nodes"] == 2
    assert "2 node(s) x 1 process(es) per node = world size 2" in outputs[0][1]


def test_devices_that_disagree_with_the_launcher_fail_clearly(tmp_path, cache_dir):
    run = tmp_path / "mismatch"
    proc = _launch(run, cache_dir, *GPT, *CPU, "trainer=ddp", "trainer.devices=3", check=False)
    assert proc.returncode != 0
    assert "trainer.devices=3 but torchrun started 2 process(es) per node" in proc.stderr
    assert not run.exists() or not (run / "checkpoints").exists()


def test_fsdp_fine_tuning_with_uneven_val_shares_matches_single_process(tmp_path, cache_dir, gpt_single, speaker_task):
    """257 val passages on 2 ranks x batch 8: shares of 129 and 128, i.e. 17 and 16 batches unless padded. Unpadded,
    the rank with the extra batch would gather FSDP weights alone and hang; padded, nothing is counted twice."""
    args = [
        "task=classification", f"model.init_from={gpt_single['checkpoint']}",
        f"data.train_path={speaker_task}/train.jsonl", f"data.val_path={speaker_task}/val.jsonl",
        "trainer.max_epochs=null", "trainer.max_steps=8", "trainer.val_check_interval=4", "task.warmup_steps=2",
        "task.lr=1e-3", "trainer.enable_progress_bar=false",
    ]
    single = _single(tmp_path / "single", cache_dir, *args, "data.batch_size=16")
    sharded = _launch(tmp_path / "fsdp", cache_dir, *args, *CPU, "trainer=fsdp", "data.batch_size=8")
    assert sharded["world_size"] == 2 and sharded["step"] == single["step"] == 8
    assert sharded["val_loss"] == pytest.approx(single["val_loss"], abs=TOLERANCE)
    assert sharded["val_accuracy"] == pytest.approx(single["val_accuracy"], abs=1e-6)  # the same 257 passages
    assert sharded["val_f1"] == pytest.approx(single["val_f1"], abs=1e-6)


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory, shakespeare_text) -> tuple[Path, Path]:
    from tests.integration.test_question_answering_task import qa_records, write_jsonl

    out = tmp_path_factory.mktemp("qa")
    # 41 val questions of 1-6 windows each: unequal rank shares, padded to equal batch counts
    return (write_jsonl(out / "train.jsonl", qa_records(shakespeare_text, 200, seed=0)),
            write_jsonl(out / "val.jsonl", qa_records(shakespeare_text, 41, seed=1)))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_question_answering_data_parallel_matches_single_process(tmp_path, cache_dir, qa_files, strategy):
    """Each question's windows are post-processed on one rank; the EM/F1 sums add up to the single-process scores."""
    train, val = qa_files
    args = [*TINY_BERT[:8], "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0",
            "task=question_answering", "task.max_seq_len=48", "task.doc_stride=16", "task.lr=3e-3",
            "task.warmup_steps=5", f"data.train_path={train}", f"data.val_path={val}", "trainer.max_epochs=null",
            *STEPS, "trainer.enable_progress_bar=false"]
    single = _single(tmp_path / "single", cache_dir, *args, "data.batch_size=8")
    distributed = _launch(tmp_path / strategy, cache_dir, *args, *CPU, f"trainer={strategy}", "data.batch_size=4")
    _assert_same_training(distributed, single)
    assert distributed["val_f1"] == pytest.approx(single["val_f1"], abs=1e-4)
    assert distributed["val_exact_match"] == pytest.approx(single["val_exact_match"], abs=1e-4)


def test_token_classification_data_parallel_matches_single_process(tmp_path, cache_dir, single_runs, shakespeare_text):
    """Entity counts are summed over ranks: with 70 val sentences on 2 ranks x batch 4 (shares padded to equal batch
    counts), DDP and FSDP see the single process's entities, F1 and loss."""
    from tests.integration.test_token_classification import write_ner_data

    data = write_ner_data(tmp_path / "ner", shakespeare_text)
    init = single_runs("bert")["checkpoint"]  # a tiny MLM checkpoint
    args = ["task=token_classification", f"model.init_from={init}", f"data.train_path={data}/train.conll",
            f"data.val_path={data}/val.jsonl", "trainer.max_epochs=null", "trainer.max_steps=8",
            "trainer.val_check_interval=4", "task.warmup_steps=2", "task.lr=5e-3", "task.lr_decay_steps=8",
            "task.max_seq_len=48", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2"]
    single = _single(tmp_path / "single", cache_dir, *args, "data.batch_size=8")
    for strategy in ("ddp", "fsdp"):
        distributed = _launch(tmp_path / strategy, cache_dir, *args, *CPU, f"trainer={strategy}", "data.batch_size=4")
        assert distributed["world_size"] == 2 and distributed["step"] == single["step"] == 8
        for key in ("val_loss", "train_loss"):
            assert distributed[key] == pytest.approx(single[key], abs=TOLERANCE), (strategy, key)
        for key in ("val_f1", "val_precision", "val_recall", "val_accuracy"):
            assert distributed[key] == pytest.approx(single[key], abs=1e-6), (strategy, key)


def test_sft_ddp_and_fsdp_match_single_process(tmp_path, cache_dir, shakespeare_text):
    """task=sft: the loss is averaged per response token over the global batch, so 2 ranks x batch 4 (DDP, FSDP)
    train exactly as 1 process x batch 8, although the ranks' micro-batches hold different numbers of response
    tokens."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_text[:40_000])
    context = ["model.block_size=64", "model.dropout=0.0"]
    pretrained = _single(tmp_path / "pre", cache_dir, *TINY_RUN, *context, f"data.path={corpus}", "trainer.max_steps=10")
    names = ["romeo", "juliet", "hamlet", "lear", "macbeth", "othello", "portia", "viola"]
    train = [{"instruction": f"Greet {n}.", "output": f"Hail, {n}!" + " o" * i} for i, n in enumerate(names * 4)]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(train[:6]))
    args = [*TINY_RUN, *context, "task=sft", f"model.init_from={pretrained['checkpoint']}",
            f"data.train_path={tmp_path / 'train.json'}", f"data.val_path={tmp_path / 'val.json'}",
            "trainer.max_epochs=null", "trainer.max_steps=8", "trainer.val_check_interval=4", "task.lr_decay_steps=8",
            "task.lr=3e-3", "task.warmup_steps=2", "task.sample_prompts=0"]
    single = _single(tmp_path / "single", cache_dir, *args, "data.batch_size=8")
    for strategy in ("ddp", "fsdp"):
        distributed = _launch(tmp_path / strategy, cache_dir, *args, *CPU, f"trainer={strategy}", "data.batch_size=4")
        assert distributed["world_size"] == 2 and distributed["step"] == single["step"] == 8
        assert distributed["val_loss"] == pytest.approx(single["val_loss"], abs=TOLERANCE), strategy
