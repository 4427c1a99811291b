"""The config tree composes, every option has a typed schema, and bad values fail before any work."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from data_pipelines import TINY_SHAKESPEARE
from data_pipelines.tokenizers import CharTokenizer
from gptframe.config import TrainConfig, to_typed
from gptframe.errors import ConfigError, TokenizerError
from gptframe.models.gpt import GPTConfig
from gptframe.tasks.causal_lm import CausalLMTaskConfig
from gptframe.tasks.data import sized_for as resolve_model_config
from tests.conftest import compose

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_default_config_is_the_default_job():
    cfg = to_typed(compose([]))
    assert isinstance(cfg, TrainConfig) and isinstance(cfg.model, GPTConfig) and isinstance(cfg.task, CausalLMTaskConfig)
    assert cfg.tokenizer.kind == "sentencepiece" and cfg.data.path == str(TINY_SHAKESPEARE)
    assert cfg.resume == "auto" and cfg.name == "default"


def test_shakespeare_char_cpu_is_nanogpts_baby_gpt():
    cfg = to_typed(compose(["experiment=shakespeare_char_cpu"]))
    m, t, tr = cfg.model, cfg.task, cfg.trainer
    assert cfg.tokenizer.kind == "char"
    assert (m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout, m.bias) == (64, 4, 4, 128, 0.0, False)
    assert cfg.data.batch_size == 12
    assert (t.lr, t.min_lr, list(t.betas), t.weight_decay, t.warmup_steps, t.lr_decay_steps) == (
        1e-3, 1e-4, [0.9, 0.99], 0.1, 100, 2000)
    assert (tr.max_steps, tr.val_check_interval, tr.eval_batches, tr.gradient_clip_val) == (2000, 250, 20, 1.0)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_named_model_composes_to_a_typed_schema(name):
    from gptframe.registry import architecture_of

    cfg = to_typed(compose([f"model={name}"]))
    spec = architecture_of(cfg.model)
    assert isinstance(cfg.model, spec.config_class)
    family = {"gpt": "gpt", "gpt2": "gpt", "bert": "bert", "llama": "llama", "llama3": "llama", "smollm": "llama"}
    assert cfg.model.arch == family[name.split("_")[0]]


def test_gpt2_124m_pads_the_vocab_to_a_multiple_of_64():
    cfg = to_typed(compose(["model=gpt2_124m"]))
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (12, 12, 768, 1024)

    class FakeGPT2Vocab(CharTokenizer):  # only its size matters here
        vocab_size = 50257

    resolved = resolve_model_config(cfg.model, FakeGPT2Vocab(["a"]))
    assert resolved.vocab_size == 50304


def test_explicit_vocab_smaller_than_the_tokenizer_is_rejected():
    cfg = GPTConfig(vocab_size=10)
    with pytest.raises(TokenizerError, match="has 65 tokens but model.vocab_size=10"):
        resolve_model_config(cfg, CharTokenizer([chr(32 + i) for i in range(65)]))


@pytest.mark.parametrize(
    "override,match",
    [("model.n_layr=3", "n_layr"), ("model.n_layer=three", "three"), ("trainer.max_stepz=3", "max_stepz"),
     ("data.batch_size=1.5", "batch_size"), ("bogus_key=1", "bogus_key")],
)
def test_typos_and_wrong_types_fail_at_composition(override, match):
    with pytest.raises(ConfigCompositionException) as err:
        compose([override])
    assert match in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize(
    "override,match",
    [("trainer.max_steps=-1", "trainer.max_steps must be >= 1"), ("model.n_head=5", "divisible"),
     ("tokenizer.kind=bpe", "tokenizer.kind must be"), ("task.min_lr=1.0", "min_lr"),
     ("data.val_fraction=0", "val_fraction"), ("trainer.eval_batches=0", "eval_batches"),
     ("trainer.process_group_timeout_s=0", "process_group_timeout_s")],
)
def test_bad_values_fail_before_any_work(override, match):
    with pytest.raises(ConfigError, match=match):
        to_typed(compose([override]))


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_the_process_group_timeout_reaches_the_strategy(trainer):
    from datetime import timedelta

    from torch.distributed.constants import default_pg_timeout

    from gptframe.training.trainer import build_strategy, resolve_topology

    def strategy(*overrides):
        return build_strategy(resolve_topology(to_typed(compose([f"trainer={trainer}", *overrides])).trainer, env={}))

    assert strategy()._timeout == default_pg_timeout  # unset: torch's own default
    assert strategy("trainer.process_group_timeout_s=90")._timeout == timedelta(seconds=90)


def test_gpt2_124m_experiment_is_set_up_for_gpus():
    import dataclasses

    from gptframe.training.run import _accumulation_for

    cfg = to_typed(compose(["experiment=gpt2_124m", "data.path=/data/corpus.txt"]))
    t = cfg.trainer
    assert (t.precision, t.compile, t.strategy, t.devices, t.num_nodes) == ("bf16-mixed", True, "ddp", "auto", "auto")
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (12, 12, 768, 1024)
    assert cfg.tokenizer.vocab_size == 50257 and cfg.model.pad_vocab_size_multiple == 64
    # ~0.5M tokens per step: 16 x 1024 tokens per GPU micro-batch -> 32 micro-batches on 1 GPU, 4 on 8 GPUs
    per_gpu = cfg.data.batch_size * cfg.model.block_size
    assert _accumulation_for(t, per_gpu).accumulate_grad_batches == 32
    assert _accumulation_for(dataclasses.replace(t), per_gpu * 8).accumulate_grad_batches == 4
