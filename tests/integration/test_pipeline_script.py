"""launch/pipeline.sh end to end with tiny models: stages chain, exports load in transformers, a re-run skips what
is done, a changed stage re-runs with what follows it, and an interrupted stage resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # whole pipelines: a minute or more each

BIN = Path(sys.executable).parent
QUIET = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5"]
GPT = ["pretrain.tokenizer.vocab_size=512", "pretrain.model=gpt_nano", "pretrain.model.n_layer=2", "pretrain.model.n_embd=32",
       "pretrain.model.n_head=2", "pretrain.model.block_size=32", "pretrain.trainer.max_steps=20",
       "pretrain.trainer.val_check_interval=10", "pretrain.trainer.eval_batches=2", "pretrain.trainer.final_eval_batches=4",
       "finetune.trainer.max_epochs=1", "finetune.task.max_seq_len=32", "finetune.data.batch_size=64"]
BERT = ["pretrain.tokenizer.vocab_size=300", "pretrain.model.num_hidden_layers=1", "pretrain.model.hidden_size=32",
        "pretrain.model.num_attention_heads=2", "pretrain.model.intermediate_size=64", "pretrain.task.max_seq_len=32",
        "pretrain.data.batch_size=8", "pretrain.trainer.max_steps=10", "pretrain.trainer.val_check_interval=10",
        "pretrain.trainer.eval_batches=2", "pretrain.trainer.final_eval_batches=4",
        "finetune.trainer.max_epochs=1", "finetune.task.max_seq_len=32", "finetune.data.batch_size=64"]


LLAMA = [*GPT[:1], "pretrain.model.n_layer=2", "pretrain.model.n_embd=32", "pretrain.model.n_head=2",
         "pretrain.model.n_kv_head=1", "pretrain.model.intermediate_size=64", "pretrain.model.block_size=32", *GPT[6:]]


def _pipeline(arch: str, out: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "2"}
    res = subprocess.run(
        ["bash", "launch/pipeline.sh", arch, f"pipeline.dir={out}", f"data.cache_dir={cache}", *QUIET, *overrides],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_gpt_pipeline_chains_stages_skips_and_resumes(tmp_path, cache_dir):
    out = tmp_path / "pipe"
    first = _pipeline("gpt", out, cache_dir, *GPT)
    results = json.loads((out / "results.json").read_text())
    assert results["num_labels"] == 8 and 0.0 <= results["finetune_val_accuracy"] <= 1.0
    assert "speaker classification (8 speakers" in first.stdout and "ROMEO:" in first.stdout  # evaluation + sample
    fine = json.loads((out / "finetune" / "summary.json").read_text())
    assert fine["init_from"] == str(out / "pretrain" / "checkpoints" / "last.ckpt")
    import transformers

    lm = transformers.AutoModelForCausalLM.from_pretrained(out / "export" / "pretrained")
    clf = transformers.AutoModelForSequenceClassification.from_pretrained(out / "export" / "finetuned")
    tok = transformers.AutoTokenizer.from_pretrained(out / "export" / "pretrained")
    assert type(lm).__name__ == "GPT2LMHeadModel" and type(clf).__name__ == "GPT2ForSequenceClassification"
    assert sorted(clf.config.id2label.values()) == fine["labels"]
    assert lm(torch.tensor([tok("ROMEO:")["input_ids"]])).logits.shape[-1] == lm.config.vocab_size

    again = _pipeline("gpt", out, cache_dir, *GPT)
    for stage in ("data", "pretrain", "finetune", "export-pretrained", "export-finetuned"):
        assert f"{stage}: done already, skipping" in again.stderr

    # a changed fine-tuning stage runs again (and its export), the pretraining stage does not
    changed = _pipeline("gpt", out, cache_dir, *GPT, "finetune.task.lr=5e-4")
    assert "pretrain: done already" in changed.stderr and "finetune: done already" not in changed.stderr
    assert "export-finetuned: done already" not in changed.stderr

    # an interrupted stage (no completion record) resumes from its checkpoint instead of starting over
    (out / "pretrain" / ".stage-done").unlink()
    resumed = _pipeline("gpt", out, cache_dir, *GPT, "finetune.task.lr=5e-4")
    assert "resume: continuing from" in resumed.stderr
    assert f"pretrain: changed, removing {out / 'finetune'}" in resumed.stderr  # stale: built on the old run


def test_bert_pipeline_pretrains_fine_tunes_and_fills_masks(tmp_path, cache_dir):
    out = tmp_path / "pipe"
    res = _pipeline("bert", out, cache_dir, *BERT)
    assert "the king is [MASK] . ->" in res.stdout  # fill-mask on the export
    pre = json.loads((out / "pretrain" / "summary.json").read_text())
    assert pre["task"] == "mlm" and pre["arch"] == "bert" and "val_mlm_accuracy" in pre
    config = json.loads((out / "export" / "finetuned" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 8
    assert json.loads((out / "export" / "pretrained" / "config.json").read_text())["architectures"] == [
        "BertForPreTraining"
    ]


def test_llama_pipeline_pretrains_fine_tunes_exports_and_samples(tmp_path, cache_dir):
    out = tmp_path / "pipe"
    res = _pipeline("llama", out, cache_dir, *LLAMA)
    assert "speaker classification (8 speakers" in res.stdout and "ROMEO:" in res.stdout
    pre = json.loads((out / "pretrain" / "summary.json").read_text())
    assert pre["arch"] == "llama" and pre["task"] == "clm"
    for stage, hf_class in (("pretrained", "LlamaForCausalLM"), ("finetuned", "LlamaForSequenceClassification")):
        config = json.loads((out / "export" / stage / "config.json").read_text())
        assert config["architectures"] == [hf_class] and config["num_key_value_heads"] == 1


def test_gpt_sft_pipeline_pretrains_then_instruction_tunes_and_chats(tmp_path, cache_dir):
    """The recipe's own data stage and finetune_data: task=sft on questions derived from the speaker task."""
    out = tmp_path / "pipe"
    res = _pipeline("gpt_sft", out, cache_dir, *GPT[:-2], "pretrain.model.block_size=64")
    fine = json.loads((out / "finetune" / "summary.json").read_text())
    assert fine["task"] == "sft" and fine["data"] == [str(out / "data" / f"instructions_{s}.jsonl") for s in ("train", "val")]
    counts, stats = fine["sft_examples"]["train"], json.loads((out / "data" / "stats.json").read_text())
    assert counts["examples"] == stats["num_train"] and 0 < counts["kept"] == counts["examples"] - counts["dropped_too_long"]
    assert fine["tokenizer"]["kind"] == "chat"
    results = json.loads((out / "results.json").read_text())
    assert results["finetune_task"] == "sft" and 0.0 <= results["chat_exact_match"] <= 1.0
    assert "sft fine-tuning: val loss" in res.stdout and "answers:" in res.stdout and "user: 'Which character" in res.stdout
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(out / "export" / "finetuned")
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)


def test_pipeline_rejects_unknown_arch_and_malformed_overrides(tmp_path):
    for args in (["roberta"], ["gpt", "not-an-override"]):
        res = subprocess.run(["bash", "launch/pipeline.sh", *args, f"pipeline.dir={tmp_path}/p"], capture_output=True,
                             text=True, cwd=REPO)
        assert res.returncode == 2 and "usage" in res.stderr
    assert not (tmp_path / "p").exists()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline-cache")
