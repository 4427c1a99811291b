"""gptframe-export on real checkpoints: a trained model exported loads in transformers (AutoModel*, AutoTokenizer)
with the same logits and greedy tokens; compiled and sharded (FSDP2) checkpoints export too; bad input exits 2."""

from __future__ import annotations

import pytest
import torch

from gptframe.errors import CheckpointError
from gptframe.interop.hf import export_model
from gptframe.loading import load_model
from tests.conftest import TINY_RUN, compose, run_cli

PROMPT = "ROMEO:\nWhat say you"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, cache_dir):
    """A tiny char-level GPT trained in-process for a few steps."""
    from gptframe.config import to_typed
    from gptframe.training.run import run_training

    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose([*TINY_RUN, "task=clm", f"data.cache_dir={cache_dir}", "trainer.max_steps=10",
                   "trainer.val_check_interval=10", "trainer.final_eval_batches=2"])
    run_training(to_typed(cfg), run_dir, cfg)
    return run_dir / "checkpoints" / "last.ckpt"


def _greedy(loaded, ids: list[int], n: int) -> list[int]:
    from gptframe.inference.generate import generate_tokens

    tok = loaded.tokenizer
    return [int(t[0]) for t in generate_tokens(loaded.model, ids, n, do_sample=False, vocab_size=tok.vocab_size,
                                               eos_id=tok.eos_id)]


def _assert_same_as_transformers(loaded, out) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    ids = loaded.tokenizer.encode(PROMPT)
    assert hf_tok(PROMPT)["input_ids"] == ids
    x = torch.tensor([ids])
    n = loaded.config.block_size - len(ids)  # transformers' GPT-2 cannot go past its context window
    with torch.no_grad():
        assert (hf(x).logits - loaded.model(x)).abs().max().item() <= 1e-4
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)[0, len(ids):]
    ours = _greedy(loaded, ids, n)
    assert len(ours) == n >= 10
    assert theirs.tolist() == ours
    assert hf_tok.decode(theirs) == loaded.tokenizer.decode(ours)


def test_export_cli_writes_a_transformers_directory(checkpoint, tmp_path):
    out = tmp_path / "hf"
    res = run_cli("gptframe-export", f"ckpt={checkpoint}", f"out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == f"{out}\tGPT2LMHeadModel"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "gptframe.json",
            "gptframe_tokenizer.json"} <= names
    _assert_same_as_transformers(load_model(checkpoint), out)
    # and gptframe reads its export back: same model, same greedy tokens
    original, back = load_model(checkpoint), load_model(out)
    ids = original.tokenizer.encode(PROMPT)
    assert back.tokenizer.fingerprint == original.tokenizer.fingerprint
    assert _greedy(back, ids, 20) == _greedy(original, ids, 20)


def test_compiled_model_checkpoint_exports(checkpoint, tmp_path):
    """A checkpoint of a torch.compile'd module (`_orig_mod.` in its names) exports the same weights."""
    from safetensors.torch import load_file

    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["state_dict"] = {k.replace("model.", "model._orig_mod.", 1): v for k, v in ckpt["state_dict"].items()}
    compiled = tmp_path / "compiled.ckpt"
    torch.save(ckpt, compiled)
    a = export_model(load_model(compiled), tmp_path / "a")
    b = export_model(load_model(checkpoint), tmp_path / "b")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    _assert_same_as_transformers(load_model(compiled), a)


def test_export_cli_rejects_bad_input_with_one_line(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    data = checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    res = run_cli("gptframe-export", f"ckpt={truncated}", f"out={out}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "truncated" in res.stderr and str(truncated) in res.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["truncated.ckpt"]

    (tmp_path / "mixtral").mkdir()
    (tmp_path / "mixtral" / "config.json").write_text('{"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}')
    (out / "x").mkdir(parents=True)
    res = run_cli("gptframe-export", f"ckpt={tmp_path / 'mixtral'}", f"out={tmp_path / 'out2'}", "head=masked_lm")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "unsupported architecture MixtralForCausalLM" in res.stderr and "GPT2LMHeadModel" in res.stderr
    res = run_cli("gptframe-export", f"ckpt={checkpoint}", f"out={out}", "overwrite=false")
    assert res.returncode == 2 and "exists and is not empty" in res.stderr and res.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out2").exists() and [p.name for p in out.iterdir()] == ["x"]


# --- sharded (FSDP2) checkpoints -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A directory checkpoint from a real one-process ModelParallelStrategy (FSDP2) run, and the run's weights."""
    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.fsdp import fully_shard

    from data_pipelines.tokenizers import CharTokenizer
    from gptframe.tasks.causal_lm import CausalLMTask

    class ShardedCausalLM(CausalLMTask):
        def configure_model(self) -> None:
            mesh = self.device_mesh["data_parallel"]
            for block in self.model.transformer.h:
                fully_shard(block, mesh=mesh)
            fully_shard(self.model, mesh=mesh)

    tok = CharTokenizer(list("abcdefgh \n"), with_eos=True)
    model_config = dict(arch="gpt", block_size=16, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32)
    task = ShardedCausalLM(model_config, {"warmup_steps": 1}, max_steps=3, tokenizer_files=tok.to_files())
    data = torch.randint(0, tok.vocab_size, (24, 17))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:]), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1), max_steps=3,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    path = tmp_path_factory.mktemp("sharded") / "last.ckpt"
    try:
        trainer.fit(task, loader)
        trainer.save_checkpoint(path)
        weights = {k: v.full_tensor().clone() for k, v in task.model.state_dict().items()}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert path.is_dir() and (path / "meta.pt").is_file() and list(path.glob("*.distcp"))
    return path, weights


def test_sharded_checkpoint_directory_loads_and_exports(sharded, tmp_path):
    path, weights = sharded
    loaded = load_model(path)
    state = loaded.model.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    out = export_model(loaded, tmp_path / "hf")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.tensor([loaded.tokenizer.encode("abc def\nhgf")])
    with torch.no_grad():
        assert (hf(x).logits - loaded.model(x)).abs().max().item() <= 1e-4


def test_damaged_sharded_checkpoint_is_a_clear_error(sharded, tmp_path):
    import shutil

    path, _ = sharded
    damaged = tmp_path / "damaged.ckpt"
    shutil.copytree(path, damaged)
    shard = next(damaged.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(damaged)
    (damaged / ".metadata").unlink()
    with pytest.raises(CheckpointError, match="incomplete: its .metadata index is missing"):
        load_model(damaged)
    (damaged / "meta.pt").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(damaged)  # no longer recognisable as a checkpoint: treated as a (bad) model directory
