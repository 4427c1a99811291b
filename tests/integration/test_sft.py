"""task=sft through the real path (Hydra config -> run_training -> Lightning) on tiny pretrained decoders: the loss on
responses per token of the global batch, packing, exact resume, the grown vocabulary, chat at inference, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import gptframe
from gptframe.config import to_typed
from gptframe.loading import load_model
from gptframe.training.run import run_training
from tests.conftest import TINY_LLAMA, TINY_RUN, compose, run_cli

NAMES = ["romeo", "juliet", "hamlet", "lear", "macbeth", "othello", "portia", "viola"]
CONTEXT = ["model.block_size=64", "model.dropout=0.0"]
ARCHS = {"gpt": [*TINY_RUN, *CONTEXT], "llama": [*TINY_LLAMA, *CONTEXT]}


def _train(run_dir: Path, cache_dir: Path, *overrides: str) -> dict:
    cfg = compose([f"data.cache_dir={cache_dir}", *overrides])
    return run_training(to_typed(cfg), run_dir, cfg)


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory) -> tuple[Path, Path]:
    """32 Alpaca-style train records (of uneven lengths: the per-token mean differs from a mean of batch means) and
    a chat-shaped val file, in Shakespeare's alphabet (the char tokenizer's)."""
    out = tmp_path_factory.mktemp("sft")
    train = [{"instruction": f"Greet {n}.", "input": "kindly" if i % 3 == 0 else "", "output": f"Hail, {n}!" + " o" * i}
             for i, n in enumerate(NAMES * 4)]
    (out / "train.json").write_text(json.dumps(train))
    val = [{"messages": [{"role": "user", "content": f"Greet {n}."}, {"role": "assistant", "content": f"Hail, {n}!"}]}
           for n in NAMES[:5]]
    (out / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    return out / "train.json", out / "val.jsonl"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, cache_dir, shakespeare_text) -> dict[str, Path]:
    """A tiny GPT and a tiny Llama, pretrained 20 steps on a slice of Tiny Shakespeare (char tokenizer)."""
    root = tmp_path_factory.mktemp("pretrained")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare_text[:60_000])
    runs = {}
    for arch, args in ARCHS.items():
        _train(root / arch, cache_dir, *args, f"data.path={corpus}", "trainer.max_steps=20")
        runs[arch] = root / arch / "checkpoints" / "last.ckpt"
    return runs


def _sft_args(arch: str, pretrained, sft_files, *extra: str) -> list[str]:
    train, val = sft_files
    return [*ARCHS[arch], "task=sft", f"model.init_from={pretrained[arch]}", f"data.train_path={train}",
            f"data.val_path={val}", "task.lr=3e-3", "task.warmup_steps=2", "trainer.log_every_n_steps=1", *extra]


def _val_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as f:
        return [float(row["val/loss"]) for row in csv.DictReader(f) if row.get("val/loss")]


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_sft_learns_the_responses_and_chats(arch, tmp_path, cache_dir, pretrained, sft_files):
    run = tmp_path / "sft"
    summary = _train(run, cache_dir, *_sft_args(arch, pretrained, sft_files, "trainer.max_epochs=6",
                                                "data.batch_size=8"))
    assert summary["task"] == "sft" and summary["arch"] == arch and summary["step"] == 6 * 4
    assert summary["sft_examples"]["train"]["kept"] == 32 and summary["sft_examples"]["val"]["kept"] == 5
    losses = _val_losses(run)
    # each epoch; the final evaluation reuses the last epoch's (same weights, same batches: run._validated_as_final)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses

    loaded = load_model(summary["checkpoint"])  # the weights are a causal LM with the ChatML tokens
    assert loaded.task == "clm" and loaded.tokenizer.kind == "chat"
    assert loaded.config.vocab_size == loaded.tokenizer.vocab_size
    pipe = gptframe.pipeline("text-generation", model=summary["checkpoint"])
    chat = [{"role": "user", "content": "Greet romeo."}]
    out = pipe(chat, max_new_tokens=20)
    assert out[0]["generated_text"][:-1] == chat and out[0]["generated_text"][-1]["role"] == "assistant"
    both = pipe([chat, [{"role": "user", "content": "Greet viola."}]], max_new_tokens=20, num_beams=2)
    assert len(both) == 2 and all(o[0]["generated_text"][-1]["role"] == "assistant" for o in both)


@pytest.fixture(scope="module")
def sft_gpt(tmp_path_factory, cache_dir, pretrained, sft_files) -> Path:
    run = tmp_path_factory.mktemp("sft_gpt")
    return Path(_train(run, cache_dir, *_sft_args("gpt", pretrained, sft_files, "trainer.max_epochs=4",
                                                  "data.batch_size=8"))["checkpoint"])


def test_the_export_chats_as_gptframe_does(tmp_path, sft_gpt):
    """transformers' apply_chat_template on the export gives gptframe's prompt ids, and its greedy generate up to the
    end of turn gives the pipeline's reply."""
    transformers = pytest.importorskip("transformers")
    from data_pipelines.sft import ChatTemplate
    from gptframe.interop.hf import export_model

    loaded = load_model(sft_gpt)
    out = export_model(loaded, tmp_path / "export")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Greet lear."}]
    ids = ChatTemplate(loaded.tokenizer).prompt_ids(chat)
    hf_ids = hf_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(hf_ids) == ids
    end = loaded.tokenizer.end_of_turn_id
    hf_out = hf_model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=[end],
                               pad_token_id=end)[0, len(ids):].tolist()
    hf_reply = loaded.tokenizer.decode(hf_out[: hf_out.index(end)] if end in hf_out else hf_out)
    reply = gptframe.pipeline("text-generation", model=out)(chat, max_new_tokens=16, return_full_text=False)
    assert reply == [{"generated_text": hf_reply}]


@pytest.mark.slow  # three gptframe-generate processes
def test_generate_chats_and_checks_the_decoding_options(sft_gpt):
    res = run_cli("gptframe-generate", f"ckpt={sft_gpt}", "chat=true", "prompt=Greet romeo.", "do_sample=false",
                  "max_new_tokens=16", "num_beams=2", "repetition_penalty=1.2", "no_repeat_ngram_size=3")
    assert res.returncode == 0, res.stderr[-2000:]
    pipe = gptframe.pipeline("text-generation", model=sft_gpt)
    reply = pipe([{"role": "user", "content": "Greet romeo."}], max_new_tokens=16, num_beams=2,
                 repetition_penalty=1.2, no_repeat_ngram_size=3, return_full_text=False)
    assert res.stdout == reply[0]["generated_text"] + "\n"
    for arg, message in (("num_beams=0", "num_beams must be >= 1, got 0"),
                         ("repetition_penalty=0", "repetition_penalty must be > 0")):
        res = run_cli("gptframe-generate", f"ckpt={sft_gpt}", arg)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        pipe("x", num_beams=0)


def test_gradient_accumulation_equals_one_big_batch(tmp_path, cache_dir, pretrained, sft_files):
    """batch 4 x accumulate 2 == batch 8: the loss is the mean over the step's response tokens, not of batch means
    (the records' responses differ in length, so the two would differ)."""
    common = _sft_args("gpt", pretrained, sft_files, "trainer.max_epochs=null", "trainer.max_steps=6",
                       "trainer.val_check_interval=6", "task.lr_decay_steps=6")
    big = _train(tmp_path / "big", cache_dir, *common, "data.batch_size=8")
    accumulated = _train(tmp_path / "acc", cache_dir, *common, "data.batch_size=4", "trainer.accumulate_grad_batches=2")
    assert accumulated["step"] == big["step"] == 6
    assert accumulated["val_loss"] == pytest.approx(big["val_loss"], abs=1e-5)


def test_packed_examples_never_see_each_other(tmp_path, cache_dir, pretrained, sft_files):
    """With (almost) no learning, the packed val loss equals the one-example-per-row val loss: each packed example
    sees only itself, at positions from 0 (a causal mask over the concatenation would change every later example)."""
    common = _sft_args("gpt", pretrained, sft_files, "trainer.max_epochs=null", "trainer.max_steps=1",
                       "task.lr=1e-12", "task.min_lr=0", "data.batch_size=8")
    single = _train(tmp_path / "single", cache_dir, *common)
    packed = _train(tmp_path / "packed", cache_dir, *common, "task.packing=true")
    assert packed["sft_examples"]["val"]["loss_tokens"] == single["sft_examples"]["val"]["loss_tokens"]
    assert packed["val_loss"] == pytest.approx(single["val_loss"], abs=1e-5)


def test_resume_continues_exactly(tmp_path, cache_dir, pretrained, sft_files):
    common = _sft_args("gpt", pretrained, sft_files, "trainer.max_epochs=null", "trainer.val_check_interval=4",
                       "task.lr_decay_steps=8", "data.batch_size=4", "model.dropout=0.1", "task.packing=true")
    straight = _train(tmp_path / "straight", cache_dir, *common, "trainer.max_steps=8")
    _train(tmp_path / "resumed", cache_dir, *common, "trainer.max_steps=4")
    resumed = _train(tmp_path / "resumed", cache_dir, *common, "trainer.max_steps=8")
    assert resumed["step"] == 8
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-6)


def test_chat_tokens_grow_the_embedding_keeping_the_pretrained_rows(pretrained):
    """init_from copies every pretrained row; the two ChatML rows start at the mean of the old ones."""
    from data_pipelines.tokenizers.chat import with_chat_template
    from gptframe.models.factory import build_model, transfer_weights
    from gptframe.tasks.sft import chat_model_config

    for arch in ARCHS:
        source = load_model(pretrained[arch])
        tokenizer = with_chat_template(source.tokenizer)
        config = chat_model_config(source.config, tokenizer)
        assert config.vocab_size == source.config.vocab_size + 2
        target = build_model("clm", config)
        transfer_weights(source.model, target)
        old, new = source.model.state_dict(), target.state_dict()
        n = source.config.vocab_size
        for key, value in old.items():
            if new[key].shape == value.shape:
                assert torch.equal(new[key], value), key
            else:  # an embedding or LM head
                assert torch.equal(new[key][:n], value), key
                assert torch.allclose(new[key][n:], value.mean(0, keepdim=True).expand(2, -1)), key


def _records(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow  # five gptframe-train processes
def test_bad_sft_input_is_one_clear_error_without_a_run_dir(tmp_path, cache_dir, pretrained, sft_files):
    ckpt = pretrained["gpt"]
    train, val = sft_files
    cases = {
        "fields": (_records(tmp_path / "a.jsonl", [{"prompt": "hi", "completion": "ho"}]),
                   "line 1: has neither 'messages' (chat) nor 'instruction' + 'output'"),
        "role": (_records(tmp_path / "b.jsonl", [{"messages": [{"role": "king", "content": "x"}]}]),
                 "line 1: message 1 has unknown role 'king'"),
        "ends_with_user": (_records(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "x"}]}]),
                           "line 1: the conversation ends with a 'user' turn"),
        "empty_response": (_records(tmp_path / "d.jsonl", [{"instruction": "x", "output": " "}]),
                           "line 1: empty response in 'output'"),
    }
    for name, (bad, fragment) in cases.items():
        run_dir = tmp_path / f"run-{name}"
        res = run_cli("gptframe-train", *ARCHS["gpt"], "task=sft", f"model.init_from={ckpt}", f"data.train_path={train}",
                      f"data.val_path={bad}", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}")
        err = res.stderr + res.stdout
        assert res.returncode == 2 and f"{bad}, {fragment}" in err and "Traceback" not in err, err[-2000:]
        assert not run_dir.exists()
    run_dir = tmp_path / "run-encoder"
    res = run_cli("gptframe-train", "task=sft", "model=bert_mini", "tokenizer=char", f"data.train_path={train}",
                  f"data.val_path={val}", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}")
    assert res.returncode == 2 and "task=sft fine-tunes decoders; BERT is an encoder" in res.stderr, res.stderr[-2000:]
    assert not run_dir.exists()
