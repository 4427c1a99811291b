"""The console scripts as a user runs them: exit codes, messages, what is (not) left on disk."""

import json

import pytest

from gptframe import pipeline
from tests.conftest import TINY_BERT, TINY_RUN, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """One real gptframe-train run shared by the generation tests."""
    run_dir = tmp_path_factory.mktemp("run")
    res = run_cli("gptframe-train", *TINY_RUN, "trainer.max_steps=60", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return run_dir


def test_train_cli_run(trained):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["step"] == 60 and (trained / "checkpoints" / "last.ckpt").is_file()
    assert (trained / "train.log").read_text().count("done: step 60") == 1
    assert (trained / ".hydra" / "overrides.yaml").is_file()


def _assert_rejected(res, *fragments, run_dir=None):
    assert res.returncode != 0
    err = res.stderr + res.stdout
    for fragment in fragments:
        assert fragment in err, err[-2000:]
    assert "Traceback" not in err
    if run_dir is not None:
        assert not run_dir.exists() or not list(run_dir.rglob("*.ckpt"))
        assert not run_dir.exists(), f"left behind: {list(run_dir.rglob('*'))}"


BAD_INPUT = {
    "typo": (["model.n_layr=3"], ["Key 'n_layr' not in 'GPTModelConfig'", "model.n_layr"]),
    "wrong_type": (["model.n_layer=three"], ["Value 'three'", "model.n_layer"]),
    "negative_steps": (["trainer.max_steps=-5"], ["trainer.max_steps must be >= 1, got -5"]),
    "bad_choice": (["trainer.precision=fp8"], ["trainer.precision must be"]),
    "missing_path": (["data.path=/nonexistent/corpus.txt"], ["no such file or directory: /nonexistent/corpus.txt"]),
    "vocab_too_small": (["model.vocab_size=10"], ["has 65 tokens but model.vocab_size=10"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_config_or_input_exits_with_one_clear_error(case, tmp_path, cache_dir):
    overrides, fragments = BAD_INPUT[case]
    run_dir = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_RUN, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", *overrides)
    _assert_rejected(res, *fragments, run_dir=run_dir)


@pytest.mark.parametrize("content,fragment", [(b"", "is empty"), (b"ok\n" * 50 + b"\xff\xfe bad", "is not UTF-8 text")])
def test_bad_corpus_exits_with_one_clear_error(content, fragment, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    run_dir = tmp_path / "run"
    cache = tmp_path / "cache"
    res = run_cli("gptframe-train", *TINY_RUN, f"data.path={corpus}", f"data.cache_dir={cache}", f"hydra.run.dir={run_dir}")
    _assert_rejected(res, fragment, str(corpus), run_dir=run_dir)
    assert not (cache / "datasets").exists() or not any((cache / "datasets").iterdir())


def test_truncated_checkpoint_is_a_clear_error(trained, tmp_path, cache_dir):
    data = (trained / "checkpoints" / "last.ckpt").read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(data[: len(data) // 2])
    run_dir = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_RUN, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", f"resume={broken}")
    _assert_rejected(res, f"checkpoint {broken} is truncated", run_dir=run_dir)
    res = run_cli("gptframe-generate", f"ckpt={broken}")
    _assert_rejected(res, "is truncated")


def test_resume_with_a_different_model_is_a_clear_error(trained, cache_dir):
    res = run_cli("gptframe-train", *TINY_RUN, "model.n_layer=3", f"data.cache_dir={cache_dir}", f"hydra.run.dir={trained}")
    _assert_rejected(res, "trained with a different model (model.n_layer: checkpoint 2 vs config 3)")


def test_generate_streams_and_is_reproducible(trained):
    ckpt = trained / "checkpoints" / "last.ckpt"
    args = [f"ckpt={ckpt}", "prompt=ROMEO: hark", "max_new_tokens=40", "seed=7", "top_k=20", "temperature=0.9"]
    a, b = run_cli("gptframe-generate", *args), run_cli("gptframe-generate", *args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("ROMEO: hark")
    assert len(a.stdout) == len("ROMEO: hark") + 40 + 1  # char tokenizer: one character per token, then newline
    greedy = run_cli("gptframe-generate", f"ckpt={ckpt}", "prompt=ROMEO:", "max_new_tokens=30", "do_sample=false")
    pipe = pipeline("text-generation", model=str(ckpt))
    out = pipe("ROMEO:", max_new_tokens=30, do_sample=False)
    assert greedy.stdout.endswith("\n") and out == [{"generated_text": greedy.stdout[:-1]}]
    two = pipe(["A", "B"], max_new_tokens=5, do_sample=True, seed=1, num_return_sequences=2)
    assert len(two) == 2 and len(two[0]) == 2 and all(len(o["generated_text"]) == 6 for o in two[1])


def test_generate_rejects_bad_arguments(trained):
    ckpt = trained / "checkpoints" / "last.ckpt"
    _assert_rejected(run_cli("gptframe-generate", f"ckpt={ckpt}", "max_new_tokns=5"), "unknown argument 'max_new_tokns'")
    _assert_rejected(run_cli("gptframe-generate", f"ckpt={ckpt}", "top_k=many"), "top_k=")
    _assert_rejected(run_cli("gptframe-generate", "ckpt=/nope.ckpt"), "checkpoint not found: /nope.ckpt")
    _assert_rejected(run_cli("gptframe-generate", f"ckpt={ckpt}", "prompt=☃"), "not in the char vocabulary")


def test_prepare_cli_prints_the_index(tmp_path, small_corpus):
    res = run_cli("gptframe-prepare", f"data.path={small_corpus}", f"data.cache_dir={tmp_path}", "tokenizer.vocab_size=400")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)  # logs go to stderr: stdout is the JSON alone
    assert info["tokenizer"]["kind"] == "sentencepiece" and info["num_tokens"]["train"] > 0
    assert (tmp_path / "datasets").is_dir()


def _labeled(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fine_tuning_bad_input_exits_with_one_clear_error(trained, tmp_path, cache_dir):
    ckpt = trained / "checkpoints" / "last.ckpt"
    train = _labeled(tmp_path / "train.jsonl", [{"text": "First Citizen", "label": "a"}, {"text": "MENENIUS", "label": "b"}])
    unseen = _labeled(tmp_path / "unseen.jsonl", [{"text": "ROMEO", "label": "c"}])
    no_label = _labeled(tmp_path / "nolabel.jsonl", [{"text": "ROMEO", "speaker": "a"}])
    data = tmp_path / "broken.ckpt"
    data.write_bytes(ckpt.read_bytes()[:5000])
    cases = {
        "unseen_label": ([f"model.init_from={ckpt}", f"data.train_path={train}", f"data.val_path={unseen}"],
                         [f"{unseen}: labels ['c'] never occur in the training data"]),
        "missing_label_column": ([f"model.init_from={ckpt}", f"data.train_path={train}", f"data.val_path={no_label}"],
                                 [f"{no_label} has no 'label' column (data.label_column)"]),
        "missing_paths": ([f"model.init_from={ckpt}"], ["task=classification needs data.train_path and data.val_path"]),
        "truncated_init_from": ([f"model.init_from={data}", f"data.train_path={train}", f"data.val_path={train}"],
                                [f"checkpoint {data} is truncated"]),
    }
    for name, (overrides, fragments) in cases.items():
        run_dir = tmp_path / f"run-{name}"
        res = run_cli("gptframe-train", "task=classification", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
                      *overrides)
        _assert_rejected(res, *fragments, run_dir=run_dir)


def test_task_and_model_that_do_not_fit_is_a_clear_error(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_RUN, "task=mlm", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}")
    _assert_rejected(res, "task=mlm does not train a GPT model", run_dir=run_dir)
    res = run_cli("gptframe-train", "task=mlm", "model=bert_mini", "tokenizer=char", f"data.cache_dir={cache_dir}",
                  f"hydra.run.dir={run_dir}", "trainer.max_steps=2")
    _assert_rejected(res, "masked-LM training needs [CLS], [SEP], [MASK] and [PAD] tokens", run_dir=run_dir)


def test_seq_len_warmup_longer_than_the_examples_is_a_clear_error(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_BERT, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
                  "task.max_seq_len=32", "task.seq_len_warmup_steps=10", "task.seq_len_warmup_start=48")
    _assert_rejected(res, "task.seq_len_warmup_start=48 exceeds the example length 32", run_dir=run_dir)
