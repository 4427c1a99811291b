"""Llama through every generic path GPT-2 takes: training, exact resume, generation, pipelines, export to transformers,
fine-tuning, and continued pretraining of an imported Hugging Face checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

import gptframe
from gptframe.config import to_typed
from gptframe.inference.generate import generate_tokens
from gptframe.interop.hf import export_model
from gptframe.loading import load_model
from gptframe.training.run import run_training
from tests.conftest import TINY_LLAMA, compose, run_cli


def _train(run_dir, cache_dir, *overrides) -> dict:
    cfg = compose([*TINY_LLAMA, f"data.cache_dir={cache_dir}", *overrides])
    return run_training(to_typed(cfg), run_dir, cfg)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("llama")
    # SentencePiece: an end-of-text token, which a classifier exported to transformers pads with
    summary = _train(run_dir, cache_dir, "trainer.max_steps=40", "tokenizer=sentencepiece", "tokenizer.vocab_size=512")
    return run_dir, summary


def test_llama_trains_with_throughput_counted(trained):
    run_dir, summary = trained
    assert summary["arch"] == "llama" and summary["step"] == 40
    assert summary["val_loss"] < 0.9 * torch.log(torch.tensor(512.0)).item()  # well below a uniform guess
    assert summary["tokens_per_s"] > 0 and summary["mfu"] is None  # CPU: no peak FLOP/s, no MFU


def test_llama_stop_and_resume_matches_an_uninterrupted_run(tmp_path, cache_dir):
    common = ["model.dropout=0.1", "task.lr_decay_steps=40", "trainer.val_check_interval=10"]
    full = _train(tmp_path / "full", cache_dir, *common, "trainer.max_steps=40")
    _train(tmp_path / "split", cache_dir, *common, "trainer.max_steps=20")
    resumed = _train(tmp_path / "split", cache_dir, *common, "trainer.max_steps=40", "resume=auto")
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-6)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], abs=1e-6)


def test_llama_generation_uses_a_grouped_query_kv_cache(trained):
    run_dir, _ = trained
    loaded = load_model(run_dir / "checkpoints" / "last.ckpt")
    cache = loaded.model.new_kv_cache(1)
    assert cache.keys.shape[2] == 2, "the cache holds n_kv_head heads, not n_head"
    prompt = loaded.tokenizer.encode("ROMEO:")
    cached = torch.stack(list(generate_tokens(loaded.model, prompt, 40, do_sample=False)), 1)
    recomputed = torch.stack(list(generate_tokens(loaded.model, prompt, 40, do_sample=False, use_cache=False)), 1)
    assert torch.equal(cached, recomputed)  # 40 new tokens run past the 32-token context: the window slides

    pipe = gptframe.pipeline("text-generation", model=loaded)
    text = pipe("ROMEO:", max_new_tokens=20, do_sample=False)[0]["generated_text"]
    res = run_cli("gptframe-generate", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "prompt=ROMEO:",
                  "max_new_tokens=20", "do_sample=false")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == text.strip()

    features = gptframe.pipeline("feature-extraction", model=loaded)("ROMEO:")
    assert features.shape == (len(prompt), 64)


def test_llama_export_loads_in_transformers_with_the_same_logits_and_ids(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = trained
    loaded = load_model(run_dir / "checkpoints" / "last.ckpt")
    out = export_model(loaded, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.num_key_value_heads == 2
    text = "First Citizen:\nBefore we proceed"
    ids = loaded.tokenizer.encode(text)
    assert AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, loaded.model(x), atol=1e-4, rtol=0)
    again = load_model(out)  # and back, exactly
    with torch.no_grad():
        assert torch.equal(again.model(x), loaded.model(x))


def test_llama_fine_tunes_as_a_classifier_and_exports(trained, tmp_path, cache_dir, speaker_task):
    from transformers import AutoModelForSequenceClassification

    run_dir, _ = trained
    cfg = compose([
        "task=classification", f"model.init_from={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"data.train_path={speaker_task / 'train.jsonl'}", f"data.val_path={speaker_task / 'val.jsonl'}",
        "trainer.max_epochs=null", "trainer.max_steps=6", "trainer.val_check_interval=6", "data.batch_size=8",
        "trainer.final_eval_batches=2", "trainer.enable_progress_bar=false", f"data.cache_dir={cache_dir}",
    ])
    summary = run_training(to_typed(cfg), tmp_path / "cls", cfg)
    assert summary["arch"] == "llama" and summary["val_accuracy"] is not None
    loaded = load_model(tmp_path / "cls" / "checkpoints" / "last.ckpt")
    out = export_model(loaded, tmp_path / "hf")
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.id2label[0] == loaded.labels[0]
    x = torch.tensor([loaded.tokenizer.encode("What say you, my lord?")])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, loaded.model(input_ids=x), atol=1e-4, rtol=0)


def _hf_llama_dir(tmp_path):
    """A random-init transformers Llama (GQA, untied embeddings) with a Llama-3-style byte-level tokenizer."""
    import transformers

    from tests.unit.test_llama_tokenizers import byte_level_dir

    path = byte_level_dir(tmp_path / "hf_llama", bos_template=True, config={})
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    config = transformers.LlamaConfig(
        vocab_size=len(vocab) + 2, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_continued_pretraining_of_an_imported_llama_exports_for_from_pretrained(tmp_path, small_corpus, cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _hf_llama_dir(tmp_path)
    run_dir = tmp_path / "continued"
    res = run_cli(
        "gptframe-train", f"model.init_from={source}", "task=clm", f"data.path={small_corpus}", "data.block_size=32",
        "data.batch_size=4", "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.final_eval_batches=2",
        "trainer.enable_progress_bar=false", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["arch"] == "llama" and summary["step"] == 4 and summary["init_from"] == str(source)
    out = tmp_path / "export"
    res = run_cli("gptframe-export", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out}")
    assert res.returncode == 0, res.stderr[-3000:]

    loaded = load_model(run_dir / "checkpoints" / "last.ckpt")
    original = AutoModelForCausalLM.from_pretrained(source).eval()
    continued = AutoModelForCausalLM.from_pretrained(out).eval()
    text = "Hello world! The quick brown fox"
    ids = AutoTokenizer.from_pretrained(out)(text)["input_ids"]
    assert ids == AutoTokenizer.from_pretrained(source)(text)["input_ids"] == loaded.tokenizer.encode_document(text)
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(continued(x).logits, loaded.model(x), atol=1e-4, rtol=0)
        assert not torch.allclose(continued(x).logits, original(x).logits, atol=1e-3), "training changed the weights"


def _rejected(res, fragment, run_dir):
    err = res.stderr + res.stdout
    assert res.returncode == 2, err[-2000:]
    assert fragment in err and "Traceback" not in err, err[-2000:]
    assert not run_dir.exists(), f"left behind: {list(run_dir.rglob('*'))}"


@pytest.mark.parametrize("overrides,fragment", [
    (["model.n_kv_head=3"], "model.n_head=4 must be divisible by model.n_kv_head=3"),
    (["model.head_dim=15"], "model.head_dim=15 must be even for rotary embeddings"),
])
def test_bad_llama_shapes_exit_with_one_clear_error(overrides, fragment, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_LLAMA, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", *overrides)
    _rejected(res, fragment, run_dir)


def test_init_from_an_unsupported_architecture_exits_with_one_clear_error(tmp_path, cache_dir):
    source = tmp_path / "mixtral"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}))
    run_dir = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_LLAMA, f"model.init_from={source}", f"data.cache_dir={cache_dir}",
                  f"hydra.run.dir={run_dir}")
    _rejected(res, "unsupported architecture MixtralForCausalLM", run_dir)


def test_a_checkpoint_whose_weights_do_not_match_its_config_exits_with_one_clear_error(trained, tmp_path, cache_dir):
    run_dir, _ = trained
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["gptframe"]["model_config"]["n_layer"] = 3  # the weights hold 2 blocks
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    new_run = tmp_path / "run"
    res = run_cli("gptframe-train", *TINY_LLAMA, f"model.init_from={bad}", f"data.cache_dir={cache_dir}",
                  f"hydra.run.dir={new_run}")
    _rejected(res, "weights do not match its model config", new_run)
    res = run_cli("gptframe-generate", f"ckpt={bad}", "max_new_tokens=2")
    assert res.returncode == 2 and "weights do not match its model config" in res.stderr


def _family_dir(tmp_path, family: str):
    """A random-init transformers model of `family` saved with the tokenizer that family ships."""
    import transformers

    from tests.unit.test_llama_tokenizers import byte_level_dir, sentencepiece_dir

    if family == "llama2":
        path = sentencepiece_dir(tmp_path / family, legacy=False)
    else:
        config = {"tokenizer_class": "Qwen2Tokenizer"} if family == "qwen2" else {}
        path = byte_level_dir(tmp_path / family, bos_template=family != "qwen2", config=config)
    vocab = transformers.AutoTokenizer.from_pretrained(path).vocab_size + 4
    shape = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    config = {
        "llama2": lambda: transformers.LlamaConfig(**shape, bos_token_id=1, eos_token_id=2),
        "mistral": lambda: transformers.MistralConfig(**shape, sliding_window=None),
        "qwen2": lambda: transformers.Qwen2Config(**shape, tie_word_embeddings=True),
    }[family]()
    torch.manual_seed(0)
    model = getattr(transformers, config.architectures[0] if config.architectures else {
        "llama2": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[family])(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # large weights: greedy tokens depend on every layer
    model.save_pretrained(path)
    return path, model.eval()


@pytest.mark.parametrize("family", ["llama2", "mistral", "qwen2"])
def test_imported_family_directory_generates_what_transformers_generates(tmp_path, family):
    from transformers import AutoTokenizer

    path, hf = _family_dir(tmp_path, family)
    loaded = load_model(path)
    assert loaded.arch == "llama" and loaded.task == "clm"
    prompt = "Hello world! The quick"
    ids = AutoTokenizer.from_pretrained(path)(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), hf(ids).logits, atol=1e-4, rtol=0)
        # an explicit attention mask: the BOS of byte-level vocabularies is id 0, which generate would take for padding
        reference = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                eos_token_id=None, pad_token_id=hf.config.vocab_size - 1)
    ours = torch.stack(list(generate_tokens(loaded.model, ids[0].tolist(), 12, do_sample=False)), 1)
    assert ours[0].tolist() == reference[0, ids.size(1):].tolist()
