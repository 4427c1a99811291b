"""Model FLOPs per token, the dense peak table, MFU, and the throughput callback in a real (tiny, CPU) training run."""

import csv

import pytest
import torch

from gptframe.config import to_typed
from gptframe.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification
from gptframe.models.bert import matmul_params as bert_matmul_params
from gptframe.models.gpt import GPT, GPTConfig, GPTForSequenceClassification
from gptframe.models.gpt import matmul_params as gpt_matmul_params
from gptframe.training.run import run_training
from gptframe.training.throughput import (
    compute_dtype,
    flops_per_token,
    model_flops_utilization,
    peak_flops,
)
from tests.conftest import TINY_RUN, compose

GPT2_124M = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
BERT_BASE = BertConfig(vocab_size=30522)  # 12 layers, 12 heads, 768 wide, 3072 inner, 512 positions


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def test_gpt2_124m_flops_per_token_by_hand():
    C, L, V = 768, 12, 50304
    block = (
        (C * 3 * C + 3 * C)  # c_attn
        + (C * C + C)  # attention c_proj
        + (C * 4 * C + 4 * C)  # c_fc
        + (4 * C * C + C)  # mlp c_proj
        + 2 * (C + C)  # ln_1, ln_2
    )
    assert block == 7_087_872
    N = V * C + L * block + 2 * C  # wte (= the tied lm_head, once) + blocks + ln_f; wpe excluded
    assert N == 38_633_472 + 85_054_464 + 1_536 == 123_689_472  # nanoGPT's "123.69M" (non-embedding)
    attention = 12 * 12 * 12 * 64 * 1024  # 12 * L * H * Q * T
    assert attention == 113_246_208
    assert 6 * N + attention == 855_383_040
    assert gpt_matmul_params(GPT2_124M) == N
    assert flops_per_token(GPT2_124M, 1024) == 855_383_040
    # a shorter batch changes only the attention term
    assert flops_per_token(GPT2_124M, 256) == 6 * N + 12 * 12 * 12 * 64 * 256


def test_gpt_matmul_params_match_the_real_model():
    with torch.device("meta"):  # real modules, no memory
        model = GPT(GPT2_124M)
        assert gpt_matmul_params(GPT2_124M) == model.num_params(non_embedding=True) == _params(model) - 1024 * 768
        no_bias = GPTConfig(n_layer=3, n_head=4, n_embd=96, block_size=64, vocab_size=500, bias=False)
        small = GPT(no_bias)
        assert gpt_matmul_params(no_bias) == small.num_params(non_embedding=True)
        classifier = GPTForSequenceClassification(GPT2_124M, num_labels=3)
        gpt = classifier.gpt  # classification: the backbone without its embedding tables
        embeddings = gpt.transformer.wte.weight.numel() + gpt.transformer.wpe.weight.numel()
        assert gpt_matmul_params(GPT2_124M, lm_head=False) == _params(gpt) - embeddings == 123_689_472 - 50304 * 768


def test_bert_base_flops_per_token_by_hand():
    H, I, L, V, T = 768, 3072, 12, 30522, 512  # noqa: E741
    layer = (
        4 * (H * H + H)  # query, key, value, attention output
        + (H * I + I)  # intermediate
        + (I * H + H)  # output
        + 2 * (2 * H)  # two LayerNorms
    )
    assert layer == 7_087_872
    encoder = 2 * H + L * layer + (H * H + H)  # embeddings LayerNorm + layers + pooler
    # word embeddings (= the tied MLM decoder), MLM transform dense + LayerNorm, decoder bias, NSP head
    heads = V * H + (H * H + H) + 2 * H + V + (2 * H + 2)
    N = encoder + heads
    assert N == 109_711_676
    attention = 12 * L * 12 * 64 * T
    assert attention == 56_623_104
    assert flops_per_token(BERT_BASE, T) == 6 * N + attention == 714_893_160
    assert flops_per_token(BERT_BASE, T, lm_head=False) == 6 * encoder + attention


def test_bert_matmul_params_match_the_real_model():
    with torch.device("meta"):
        model = BertForPreTraining(BERT_BASE)
        emb = model.bert.embeddings
        lookups = emb.position_embeddings.weight.numel() + emb.token_type_embeddings.weight.numel()
        assert _params(model.bert) == 109_482_240  # bert-base-uncased's BertModel
        assert bert_matmul_params(BERT_BASE) == _params(model) - lookups
        classifier = BertForSequenceClassification(BERT_BASE, num_labels=2)
        all_embeddings = lookups + classifier.bert.embeddings.word_embeddings.weight.numel()
        assert bert_matmul_params(BERT_BASE, lm_head=False) == _params(classifier.bert) - all_embeddings


@pytest.mark.parametrize(
    ("device_name", "dtype", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),  # SXM5
        ("NVIDIA H100 80GB HBM3", "tf32", 494.7e12),
        ("NVIDIA H100 80GB HBM3", "fp32", 66.9e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H100 PCIe", "tf32", 378e12),
        ("NVIDIA H100 NVL", "bf16", 835.5e12),
        ("NVIDIA H200", "bf16", 989.4e12),
        ("NVIDIA H200", "fp16", 989.4e12),
        ("NVIDIA H200", "tf32", 494.7e12),
        ("NVIDIA H200 NVL", "bf16", 835.5e12),
        ("NVIDIA GH200 480GB", "bf16", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100-SXM4-40GB", "tf32", 156e12),
        ("NVIDIA A100-PCIE-40GB", "fp32", 19.5e12),
        ("NVIDIA A100 80GB PCIe", "bf16", 312e12),
        ("NVIDIA A10", "bf16", 125e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("NVIDIA L40S", "bf16", 362.05e12),
        ("NVIDIA L40", "bf16", 181.05e12),
        ("Tesla V100-SXM2-16GB", "fp16", 125e12),
        ("Tesla V100-PCIE-32GB", "fp16", 112e12),
        ("Tesla T4", "fp16", 65e12),
        # no figure: no bf16 / TF32 tensor cores, an unlisted GPU, a CPU, no dtype
        ("Tesla V100-SXM2-16GB", "bf16", None),
        ("Tesla T4", "tf32", None),
        ("NVIDIA A10G", "bf16", None),
        ("NVIDIA GeForce RTX 4090", "bf16", None),
        ("cpu", "fp32", None),
        ("NVIDIA H100 80GB HBM3", None, None),
    ],
)
def test_peak_flops_for_real_device_names(device_name, dtype, expected):
    assert peak_flops(device_name, dtype) == expected


def test_compute_dtype_from_the_trainer_precision():
    hopper, volta = (9, 0), (7, 0)
    assert compute_dtype("bf16-mixed", hopper, "high") == "bf16"
    assert compute_dtype("bf16-true", hopper, "highest") == "bf16"
    assert compute_dtype("16-mixed", volta, "highest") == "fp16"
    assert compute_dtype("32-true", hopper, "high") == "tf32"
    assert compute_dtype("32-true", hopper, "highest") == "fp32"
    assert compute_dtype("32-true", volta, "high") == "fp32"  # no TF32 before Ampere
    assert compute_dtype("32-true", None, "high") == "fp32"  # CPU
    assert compute_dtype("64-true", hopper, "high") is None


def test_mfu_of_gpt2_124m_at_a_given_rate():
    # 400k tokens/s on one H100 SXM in bf16: 855,383,040 * 400,000 = 342.15 TFLOP/s of 989.4
    fpt = flops_per_token(GPT2_124M, 1024)
    mfu = model_flops_utilization(400_000, fpt, peak_flops("NVIDIA H100 80GB HBM3", "bf16"))
    assert mfu == pytest.approx(855_383_040 * 400_000 / 989.4e12)
    assert mfu == pytest.approx(0.34582, abs=1e-5)


def test_callback_logs_throughput_and_no_mfu_on_cpu(tmp_path, cache_dir):
    cfg = compose([*TINY_RUN, f"data.cache_dir={cache_dir}", "trainer.max_steps=20", "trainer.val_check_interval=10",
                   "trainer.accumulate_grad_batches=2"])
    summary = run_training(to_typed(cfg), tmp_path, cfg)
    assert summary["tokens_per_s"] > 0 and summary["mfu"] is None
    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert "train/mfu" not in rows[0]
    logged = [r for r in rows if r["train/tokens_per_s_per_device"]]
    # every 5 optimizer steps (the CSV's step column counts from 0), with 2 micro-batches per step
    assert [int(r["step"]) for r in logged] == [4, 9, 14, 19]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    model = GPTConfig(**checkpoint["gptframe"]["model_config"])
    assert (model.n_layer, model.n_embd, model.block_size, model.vocab_size) == (2, 64, 32, 65)  # char level
    for r in logged:  # the CSV holds float32 values
        per_device = float(r["train/tokens_per_s_per_device"])
        assert per_device > 0 and float(r["train/tokens_per_s"]) == pytest.approx(per_device)  # one process
        tflops = flops_per_token(model, 32) * per_device / 1e12
        assert float(r["train/tflops_per_device"]) == pytest.approx(tflops, rel=1e-5)
