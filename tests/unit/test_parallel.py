"""Topology from launcher environments, activation checkpointing, world-size-invariant sampling, requeue resume."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
import torch

from data_pipelines.sampling import EvalBlockSampler, RandomBlockSampler
from gptframe.config import TrainerConfig
from gptframe.errors import ConfigError
from gptframe.models.bert import BertConfig, BertForPreTraining
from gptframe.models.gpt import GPT, GPTConfig
from gptframe.training.parallelize import parallelize, transformer_blocks
from gptframe.training.resume import resolve_resume
from gptframe.training.trainer import resolve_topology, world_size

LAUNCH_VARS = ("SLURM_NTASKS", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME", "LOCAL_WORLD_SIZE",
               "WORLD_SIZE", "RANK", "LOCAL_RANK", "GROUP_RANK")


@pytest.fixture()
def bare_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_auto_topology_without_a_launcher_is_one_cpu_process(bare_env):
    cfg = resolve_topology(TrainerConfig(accelerator="cpu", devices="auto", num_nodes="auto", strategy="ddp"))
    assert (cfg.devices, cfg.num_nodes, world_size(cfg)) == (1, 1, 1)


def test_several_devices_without_a_strategy_use_ddp(bare_env):
    assert resolve_topology(TrainerConfig(accelerator="cpu", devices=2)).strategy == "ddp"
    assert resolve_topology(TrainerConfig(accelerator="cpu", devices=1)).strategy == "auto"


def test_torchrun_topology_fills_auto_and_checks_explicit_values(bare_env):
    bare_env.setenv("LOCAL_WORLD_SIZE", "4")
    bare_env.setenv("WORLD_SIZE", "8")
    cfg = resolve_topology(TrainerConfig(devices="auto", num_nodes="auto", strategy="fsdp"))
    assert (cfg.devices, cfg.num_nodes, world_size(cfg)) == (4, 2, 8)
    with pytest.raises(ConfigError, match=r"trainer.devices=2 but torchrun started 4 process\(es\) per node"):
        resolve_topology(TrainerConfig(devices=2, num_nodes="auto"))
    with pytest.raises(ConfigError, match=r"trainer.num_nodes=1 but torchrun started processes on 2 node"):
        resolve_topology(TrainerConfig(devices=4, num_nodes=1))


def test_slurm_topology_comes_from_srun_variables(bare_env):
    for name, value in {"SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4",
                        "SLURM_JOB_NAME": "pretrain"}.items():
        bare_env.setenv(name, value)
    cfg = resolve_topology(TrainerConfig(devices="auto", num_nodes="auto", strategy="ddp"))
    assert (cfg.devices, cfg.num_nodes) == (4, 2)
    with pytest.raises(ConfigError, match="srun started 4 process"):
        resolve_topology(TrainerConfig(devices=8, num_nodes="auto"))


@pytest.mark.parametrize("value", ["two", 0, [], "all"])
def test_bad_devices_are_rejected(value):
    with pytest.raises(ValueError, match="trainer.devices"):
        TrainerConfig(devices=value)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="trainer.strategy must be one of auto|ddp|fsdp"):
        TrainerConfig(strategy="deepspeed")


def _loss_and_grads(model: torch.nn.Module, *inputs: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    out = model(*inputs)
    loss = (out[0] if isinstance(out, tuple) else out).float().pow(2).mean()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_activation_checkpointing_keeps_names_and_gradients(arch):
    torch.manual_seed(0)
    if arch == "gpt":
        config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
        make = lambda: GPT(config)  # noqa: E731
        inputs = (torch.randint(0, 64, (3, 16)),)
    else:
        config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
        make = lambda: BertForPreTraining(config)  # noqa: E731
        inputs = (torch.randint(0, 64, (3, 16)),)
    plain = make()
    checkpointed = make()
    checkpointed.load_state_dict(plain.state_dict())
    parallelize(checkpointed, activation_checkpointing=True)
    assert len(transformer_blocks(checkpointed)) == 2
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # no wrapper names in checkpoints
    loss, grads = _loss_and_grads(plain, *inputs)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, *inputs)
    assert loss_ckpt == pytest.approx(loss, abs=1e-6)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6)
    parallelize(checkpointed, activation_checkpointing=True)  # idempotent: Lightning calls configure_model again


def test_every_world_size_draws_the_single_process_examples():
    """The union of the ranks' (key, offset) pairs for each global batch is what one process draws, in order."""
    single = iter(RandomBlockSampler(10_000, 32, 8, seed=3, with_index=True))
    ranks = [iter(RandomBlockSampler(10_000, 32, 2, seed=3, rank=r, world_size=4, with_index=True)) for r in range(4)]
    for _ in range(5):
        keys, offsets = next(single)
        parts = [next(r) for r in ranks]
        assert sum((k for k, _ in parts), []) == keys
        assert sum((o for _, o in parts), []) == offsets
    whole = EvalBlockSampler(5_000, 32, 4, max_blocks=40, with_index=True)
    split = [EvalBlockSampler(5_000, 32, 2, max_blocks=40, rank=r, world_size=2, with_index=True) for r in range(2)]
    pairs = {(k, o) for keys, offs in whole for k, o in zip(keys, offs, strict=True)}
    split_pairs = [(k, o) for s in split for keys, offs in s for k, o in zip(keys, offs, strict=True)]
    assert len(split_pairs) == len(pairs) == 40 and set(split_pairs) == pairs


def _fake_checkpoint(path, step: int) -> None:
    torch.save({"gptframe": {"task": "clm", "model_config": {}, "tokenizer_files": {}}, "state_dict": {}, "global_step": step},
               path)


def test_resume_auto_picks_the_most_advanced_checkpoint(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    assert resolve_resume("auto", tmp_path) is None
    _fake_checkpoint(ckpt_dir / "last.ckpt", 100)
    assert resolve_resume("auto", tmp_path) == ckpt_dir / "last.ckpt"
    # SLURM's requeue signal: Lightning saved hpc_ckpt_1.ckpt at step 130, after last.ckpt (step 100)
    _fake_checkpoint(ckpt_dir / "hpc_ckpt_1.ckpt", 130)
    assert resolve_resume("auto", tmp_path) == ckpt_dir / "hpc_ckpt_1.ckpt"
    # the resumed job then validated and saved last.ckpt at step 150
    _fake_checkpoint(ckpt_dir / "last.ckpt", 150)
    assert resolve_resume("auto", tmp_path) == ckpt_dir / "last.ckpt"
    # same step: the later-saved one
    time.sleep(0.01)
    _fake_checkpoint(ckpt_dir / "hpc_ckpt_2.ckpt", 150)
    os.utime(ckpt_dir / "hpc_ckpt_2.ckpt", (time.time() + 5, time.time() + 5))
    assert resolve_resume("auto", tmp_path) == ckpt_dir / "hpc_ckpt_2.ckpt"
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        resolve_resume(None, tmp_path)


def test_global_batch_tokens_sets_accumulation(tmp_path, cache_dir):
    from gptframe.config import to_typed
    from gptframe.training.run import run_training
    from tests.conftest import TINY_RUN, compose

    # 8 sequences x 32 tokens = 256 tokens per micro-batch; 1024 tokens per step -> 4 micro-batches
    cfg = compose([*TINY_RUN, "trainer.max_steps=4", "trainer.global_batch_tokens=1024", f"data.cache_dir={cache_dir}"])
    summary = run_training(to_typed(cfg), tmp_path, cfg)
    assert summary["tokens_seen"] == 4 * 1024
    assert dataclasses.asdict(to_typed(cfg).trainer)["accumulate_grad_batches"] == 1  # the config is left as written
    assert np.isfinite(summary["val_loss"])


def test_fsdp_rejects_fp16_mixed_precision_at_start_up():
    with pytest.raises(ValueError, match="trainer.precision=16-mixed is not supported with trainer=fsdp"):
        TrainerConfig(strategy="fsdp", precision="16-mixed")
    TrainerConfig(strategy="ddp", precision="16-mixed")  # DDP has the loss scaler


def test_resume_auto_considers_periodic_checkpoints_and_skips_unreadable_ones(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    _fake_checkpoint(ckpt_dir / "last.ckpt", 100)  # the last validation
    _fake_checkpoint(ckpt_dir / "step000150.ckpt", 150)  # a periodic checkpoint after it (submitit requeues rely on it)
    _fake_checkpoint(ckpt_dir / "best-step000050.ckpt", 50)
    assert resolve_resume("auto", tmp_path) == ckpt_dir / "step000150.ckpt"
    (ckpt_dir / "hpc_ckpt_1.ckpt").write_bytes(b"PK\x03\x04 cut short")  # a save that was killed
    assert resolve_resume("auto", tmp_path) == ckpt_dir / "step000150.ckpt"
    for p in ckpt_dir.glob("*.ckpt"):
        if p.name != "hpc_ckpt_1.ckpt":
            p.unlink()
    from gptframe.errors import CheckpointError

    with pytest.raises(CheckpointError, match="none of the checkpoints"):
        resolve_resume("auto", tmp_path)
