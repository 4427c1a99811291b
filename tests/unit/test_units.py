"""The architecture and task units: generic code looks them up and never names one."""

import re
from pathlib import Path

import pytest

from gptframe.registry import architectures
from gptframe.tasks import TASKS

REPO = Path(__file__).resolve().parents[2]
ARCH_UNITS = REPO / "gptframe" / "models"
# string literals naming an architecture, or comparisons of an architecture / task name
ARCH_NAME = re.compile(r"""["'](gpt2?|bert|llama|mistral|qwen2)["']""")
COMPARISON = re.compile(r"==|!=|\bin\s*[(\[{]")
TASK_NAME = re.compile("[\"'](" + "|".join(TASKS) + ")[\"']")
# the one allowed mention: checkpoints of format 1 predate every architecture but GPT
ALLOWED = {("gptframe/training/checkpoints.py", 'meta["model_config"].setdefault("arch", "gpt")')}


def _generic_sources() -> list[Path]:
    files = [*REPO.glob("gptframe/**/*.py"), *REPO.glob("data_pipelines/**/*.py")]
    return [f for f in files if ARCH_UNITS not in f.parents]


def test_generic_code_never_names_an_architecture_or_branches_on_a_task():
    found = []
    for path in _generic_sources():
        rel = path.relative_to(REPO).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(rel == f and snippet in line for f, snippet in ALLOWED):
                continue
            if ARCH_NAME.search(code) or (COMPARISON.search(code) and TASK_NAME.search(code)):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "architecture or task names in generic code:\n" + "\n".join(found)


def test_every_unit_is_registered_with_a_config_group_option():
    conf = REPO / "conf"
    for name, spec in architectures().items():
        assert spec.config_class.__dataclass_fields__["arch"].default == name
        presets = [p for p in (conf / "model").glob("*.yaml") if f"{name}_schema" in p.read_text()]
        assert presets, f"architecture {name} has no conf/model preset"
        for task in spec.models:
            assert task in TASKS, f"{name} trains unknown task {task}"
    for name, task in TASKS.items():
        assert (conf / "task" / f"{name}.yaml").is_file(), f"task {name} has no conf/task/{name}.yaml"
        assert task.config_class.__dataclass_fields__["name"].default == name


@pytest.mark.parametrize("arch", sorted(architectures()))
def test_each_architecture_declares_what_generic_code_needs(arch):
    spec = architectures()[arch]
    config = spec.config_class(vocab_size=64)
    assert spec.context_length(config) > 0
    assert spec.flops_per_token(config, 16, True) > spec.flops_per_token(config, 16, False) > 0
    assert spec.describe(config)
    for task, hf_heads in spec.hf.exports.items():
        assert task in spec.models and hf_heads
    assert set(spec.hf.imports.values()) <= set(spec.models)


def test_a_new_architecture_plugs_in_without_touching_generic_code(tmp_path, cache_dir):
    """A fourth architecture, registered from outside gptframe (here: GPT's network under another name), trains,
    checkpoints, loads and generates through the unchanged generic code."""
    from dataclasses import dataclass

    from hydra.core.config_store import ConfigStore

    from gptframe.config import to_typed
    from gptframe.inference.generate import generate_tokens
    from gptframe.loading import load_model
    from gptframe.models.gpt import GPT, GPTConfig, GPTForSequenceClassification
    from gptframe.models.gpt import SPEC as GPT_SPEC
    from gptframe.registry import _ARCHITECTURES, register_architecture
    from gptframe.training.run import run_training
    from tests.conftest import TINY_RUN, compose

    @dataclass
    class ToyConfig(GPTConfig):
        arch: str = "toy"

        def __post_init__(self) -> None:
            pass

    class Toy(GPT):
        pass

    spec = register_architecture(GPT_SPEC.__class__(**{
        **GPT_SPEC.__dict__, "name": "toy", "config_class": ToyConfig,
        "models": {"clm": Toy, "classification": GPTForSequenceClassification},
    }))
    try:
        ConfigStore.instance().store(group="model", name="toy", node={"defaults": ["toy_schema"], "n_layer": 1})
        tiny = [o for o in TINY_RUN if not o.startswith("model=")]
        cfg = compose([*tiny, "model=toy", "model.n_layer=1", "trainer.max_steps=4", f"data.cache_dir={cache_dir}"])
        summary = run_training(to_typed(cfg), tmp_path / "run", cfg)
        assert summary["arch"] == "toy" and summary["step"] == 4
        loaded = load_model(summary["checkpoint"])
        assert isinstance(loaded.model, Toy) and loaded.spec is spec
        assert len(list(generate_tokens(loaded.model, [1, 2], 3, do_sample=False))) == 3
    finally:
        _ARCHITECTURES.pop("toy")
