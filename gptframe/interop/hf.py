"""gptframe models <-> Hugging Face `transformers` model directories.

Export writes a directory `transformers` loads with `from_pretrained` (config.json, model.safetensors, tokenizer
files), plus gptframe's own tokenizer files and `gptframe.json`, so importing the export back is exact. Import reads
such a directory or one `transformers` wrote for GPT-2 or BERT. Importing needs no `transformers`: config.json is
read as JSON and the weights with safetensors (or torch.load).

Names: gptframe's GPT uses nanoGPT's names, which are GPT-2's, but GPT-2 stores its projections as `Conv1D`
([in, out] weights), so those are transposed. gptframe's BERT uses transformers' names already.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from data_pipelines.prepare import publish_dir
from data_pipelines.tokenizers import Tokenizer, load_hf_tokenizer
from gptframe.errors import CheckpointError, ConfigError, TokenizerError
from gptframe.models.bert import BertConfig, BertForSequenceClassification
from gptframe.models.factory import build_model
from gptframe.models.gpt import GPTConfig
from gptframe.training.checkpoints import SHARDED_META_FILE, LoadedModel, model_from_checkpoint

log = logging.getLogger(__name__)

GPTFRAME_FILE = "gptframe.json"  # what an export adds for gptframe: task, arch, labels, the exact model config
GPTFRAME_FORMAT = 1

# transformers class -> (arch, task) it is imported as
IMPORTS: dict[str, tuple[str, str]] = {
    "GPT2LMHeadModel": ("gpt", "clm"),
    "GPT2Model": ("gpt", "clm"),  # the LM head is the tied token embedding: nothing is missing
    # transformers pools the last token that is not pad_token_id, gptframe the last one attention_mask keeps: the
    # same on right-padded batches whose texts do not themselves hold the pad token
    "GPT2ForSequenceClassification": ("gpt", "classification"),
    "BertForPreTraining": ("bert", "mlm"),
    "BertForMaskedLM": ("bert", "mlm"),  # no pooler and NSP head: freshly initialised
    "BertModel": ("bert", "mlm"),  # no heads: freshly initialised
    "BertForSequenceClassification": ("bert", "classification"),
}
# configs without `architectures` (some older uploads): their model type's base class
BASE_CLASSES = {"gpt2": "GPT2LMHeadModel", "bert": "BertModel"}
# (arch, task) -> export head -> transformers class; the first head is the default
EXPORTS: dict[tuple[str, str], dict[str, str]] = {
    ("gpt", "clm"): {"lm": "GPT2LMHeadModel"},
    ("gpt", "classification"): {"classifier": "GPT2ForSequenceClassification"},
    ("bert", "mlm"): {"pretraining": "BertForPreTraining", "masked_lm": "BertForMaskedLM", "base": "BertModel"},
    ("bert", "classification"): {"classifier": "BertForSequenceClassification"},
}

# ---------------------------------------------------------------------------------------------------------------------
# configs

GPT_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}  # ours -> transformers
HF_GPT_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
GPT_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which gptframe's GPT uses (as GPT-2)
BERT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
               "layer_norm_eps", "initializer_range")


def gpt_config_to_hf(config: GPTConfig) -> dict:
    """transformers.GPT2Config arguments. bias=False has no GPT-2 switch: the export writes zero biases instead."""
    return dict(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=None, activation_function=GPT_ACTIVATIONS[config.activation],
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        layer_norm_epsilon=GPT_LAYER_NORM_EPS, tie_word_embeddings=True,
    )


def gpt_config_from_hf(hf: dict, where: str) -> GPTConfig:
    """A GPT2Config (as config.json holds it, defaults as transformers') -> GPTConfig; what gptframe's GPT cannot
    compute exactly is refused."""
    act = hf.get("activation_function", "gelu_new")
    if act not in HF_GPT_ACTIVATIONS:
        raise CheckpointError(f"{where}: activation_function={act!r} is not supported (gptframe's GPT: "
                              f"{', '.join(HF_GPT_ACTIVATIONS)})")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise CheckpointError(f"{where}: n_inner={hf['n_inner']} is not supported (gptframe's GPT: 4 * n_embd)")
    eps = hf.get("layer_norm_epsilon", GPT_LAYER_NORM_EPS)
    if not math.isclose(eps, GPT_LAYER_NORM_EPS, rel_tol=1e-6):
        raise CheckpointError(f"{where}: layer_norm_epsilon={eps} is not supported (gptframe's GPT: 1e-5)")
    for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                           ("add_cross_attention", False)):
        if hf.get(key, supported) != supported:
            raise CheckpointError(f"{where}: {key}={hf[key]} is not supported (gptframe's GPT: {supported})")
    return GPTConfig(
        block_size=hf.get("n_positions", 1024), vocab_size=hf.get("vocab_size", 50257), n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12), n_embd=n_embd, dropout=hf.get("resid_pdrop", 0.1), bias=True,
        activation=HF_GPT_ACTIVATIONS[act],
    )


def bert_config_to_hf(config: BertConfig) -> dict:
    return {**{f: getattr(config, f) for f in BERT_FIELDS}, "hidden_act": "gelu"}


def bert_config_from_hf(hf: dict, where: str) -> BertConfig:
    for key, supported in (("hidden_act", "gelu"), ("position_embedding_type", "absolute"), ("is_decoder", False),
                           ("add_cross_attention", False)):
        if hf.get(key, supported) != supported:
            raise CheckpointError(f"{where}: {key}={hf[key]!r} is not supported (gptframe's BERT: {supported!r})")
    values = {f: hf[f] for f in BERT_FIELDS if f in hf}
    values.setdefault("vocab_size", 30522)  # transformers' default, where the vocab size is not written
    return BertConfig(**values)


# ---------------------------------------------------------------------------------------------------------------------
# state dicts

CONV1D_WEIGHTS = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
GPT_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers saved
BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def gpt_state_to_hf(state: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.replace("_orig_mod.", "")
        if task == "classification":
            if key.startswith("gpt.lm_head."):
                continue  # the tied embedding again; the classifier has no LM head
            key = key.removeprefix("gpt.")
        out[key] = value.t().contiguous() if key.endswith(CONV1D_WEIGHTS) else value
    return out


def gpt_state_from_hf(state: dict[str, torch.Tensor], task: str, where: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith(GPT_BUFFERS):
            continue
        if not key.startswith(("transformer.", "lm_head.", "score.")):
            key = "transformer." + key  # saved from GPT2Model (e.g. the original gpt2 upload)
        out[key] = value.t() if key.endswith(CONV1D_WEIGHTS) else value
    wte = out.get("transformer.wte.weight")
    head = out.pop("lm_head.weight", None)
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise CheckpointError(f"{where}: lm_head.weight differs from the token embedding; gptframe's GPT ties them")
    if wte is not None:
        out["lm_head.weight"] = wte
    if task == "classification":
        out = {k if k.startswith("score.") else "gpt." + k: v for k, v in out.items()}
    return out


def bert_state_to_hf(state: dict[str, torch.Tensor], hf_class: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.replace("_orig_mod.", "")
        if hf_class == "BertForMaskedLM" and key.startswith(("bert.pooler.", "cls.seq_relationship.")):
            continue
        if hf_class == "BertModel":
            if not key.startswith("bert."):
                continue
            key = key.removeprefix("bert.")
        out[key] = value
    if "cls.predictions.bias" in out:
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]  # transformers ties the two
    return out


def bert_state_from_hf(state: dict[str, torch.Tensor], task: str, where: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")  # TF era
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "bert." + key  # saved from BertModel
        if key.endswith(BERT_BUFFERS):
            continue
        out[key] = value
    decoder_bias = out.pop("cls.predictions.decoder.bias", None)
    if decoder_bias is not None:
        out.setdefault("cls.predictions.bias", decoder_bias)
    wte = out.get("bert.embeddings.word_embeddings.weight")
    decoder = out.pop("cls.predictions.decoder.weight", None)
    if decoder is not None and wte is not None and not torch.equal(decoder, wte):
        raise CheckpointError(f"{where}: the MLM decoder differs from the word embedding; gptframe's BERT ties them")
    if task == "mlm" and wte is not None:
        out["cls.predictions.decoder.weight"] = wte
    return out


def _zero_biases_dropped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The GPT state without its biases if they are all zero (a bias=False model exported to GPT-2), else None."""
    biases = [k for k in state if k.endswith(".bias")]
    if not biases or any(bool(state[k].any()) for k in biases):
        return None
    return {k: v for k, v in state.items() if k not in biases}


# ---------------------------------------------------------------------------------------------------------------------
# import


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, pytorch_model.bin, or their sharded forms (an index.json naming the shards)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            files = [path / name]
            break
        index = path / f"{name}.index.json"
        if index.is_file():
            try:
                files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
            except (ValueError, KeyError, AttributeError) as e:
                raise CheckpointError(f"{index} is not a valid weight index: {e}") from None
            break
    else:
        raise CheckpointError(f"{path} holds no weights (model.safetensors, pytorch_model.bin, or a sharded index)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{path}: the weight shard {file.name} is missing")
        try:
            if file.name.endswith(".safetensors"):
                from safetensors.torch import load_file

                state.update(load_file(file))
            else:
                from gptframe.training.safe_loading import safe_torch_load

                state.update(safe_torch_load(file, what="weights file"))  # weights_only: pickled code is refused
        except CheckpointError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{file} cannot be read (truncated or corrupt?): {first}") from None
    return state


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file} cannot be read as JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a JSON object")
    return data


def _architecture(hf: dict, path: Path) -> str:
    archs = hf.get("architectures") or []
    name = archs[0] if archs else BASE_CLASSES.get(hf.get("model_type", ""))
    if name not in IMPORTS:
        found = name or f"model_type={hf.get('model_type')!r} without architectures"
        raise CheckpointError(
            f"{path}: unsupported architecture {found}; gptframe imports {', '.join(IMPORTS)}"
        )
    return name


def _labels(hf: dict, state: dict[str, torch.Tensor], head: str) -> list[str]:
    id2label = hf.get("id2label")
    if id2label:
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    rows = state[head].shape[0] if head in state else hf.get("num_labels", 2)
    return [f"LABEL_{i}" for i in range(rows)]


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], may_be_missing: tuple[str, ...], where: str) -> None:
    """Strict, except for heads the directory may lack (kept freshly initialised and logged)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes
        raise CheckpointError(f"{where}: weights do not match config.json: {e}") from None
    missing = [k for k in result.missing_keys if not k.startswith(may_be_missing)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{where}: weights do not match the architecture: missing {missing[:6]}, unexpected {result.unexpected_keys[:6]}"
        )
    fresh = sorted({".".join(k.split(".")[:2]) for k in result.missing_keys})  # e.g. bert.pooler, cls.predictions
    if fresh:
        log.info("%s has no weights for %s: freshly initialised", where, ", ".join(fresh))


def load_hf_directory(path: str | Path) -> LoadedModel:
    """A gptframe export or a transformers GPT-2 / BERT directory as a gptframe model (eval mode) and tokenizer.

    A sharded Lightning checkpoint (a directory with meta.pt) is read as the gptframe checkpoint it is.
    """
    path = Path(path).expanduser()
    if (path / SHARDED_META_FILE).is_file():
        return model_from_checkpoint(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is not a model directory: no config.json (expected a gptframe export, a Hugging Face model dir "
            f"of {', '.join(IMPORTS)}, or a sharded gptframe checkpoint)"
        )
    hf = _read_json(path / "config.json")
    hf_class = _architecture(hf, path)
    arch, task = IMPORTS[hf_class]
    ours = _read_json(path / GPTFRAME_FILE) if (path / GPTFRAME_FILE).is_file() else {}
    exact = ours.get("model_config") or {}
    where = f"{hf_class} in {path}"
    config = gpt_config_from_hf(hf, where) if arch == "gpt" else bert_config_from_hf(hf, where)
    tokenizer = load_hf_tokenizer(path)  # gptframe's own files where an export holds them
    if tokenizer.vocab_size > config.vocab_size:
        raise TokenizerError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding only "
            f"{config.vocab_size} rows"
        )
    weights = read_hf_weights(path)
    if arch == "gpt":
        state = gpt_state_from_hf(weights, task, where)
        if exact.get("bias") is False and (unbiased := _zero_biases_dropped(state)) is not None:
            state, config.bias = unbiased, False
        may_be_missing: tuple[str, ...] = ()
    else:
        state = bert_state_from_hf(weights, task, where)
        may_be_missing = ("bert.pooler.", "cls.") if task == "mlm" else ()
    config.pad_vocab_size_multiple = exact.get("pad_vocab_size_multiple", 1)  # informative once vocab_size is set
    labels = _labels(hf, state, "score.weight" if arch == "gpt" else "classifier.weight") if task == "classification" else None
    if arch == "bert" and task == "classification" and hf.get("classifier_dropout") is not None:
        model: nn.Module = BertForSequenceClassification(config, len(labels), hf["classifier_dropout"])
    else:
        model = build_model(task, config, len(labels) if labels else None)
    _load_weights(model, state, may_be_missing, where)
    return LoadedModel(model.eval(), tokenizer, task, config, labels)


# ---------------------------------------------------------------------------------------------------------------------
# export


def export_class(arch: str, task: str, head: str | None = None) -> str:
    """The transformers class a gptframe model exports as (head: a choice where there are several)."""
    heads = EXPORTS.get((arch, task))
    if heads is None:
        raise ConfigError(f"a {arch.upper()} {task} model has no Hugging Face export")
    if head is None:
        return next(iter(heads.values()))
    if head not in heads:
        raise ConfigError(f"head={head!r} is not available for a {arch.upper()} {task} model (choose from "
                          f"{', '.join(heads)})")
    return heads[head]


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"out dir {out} exists and is not empty (pass overwrite=true to replace it)")


def _special_ids(loaded: LoadedModel, hf_class: str) -> dict:
    tok = loaded.tokenizer
    if loaded.arch == "bert":
        return {"pad_token_id": tok.pad_id, "bos_token_id": None, "eos_token_id": None}
    pad = tok.pad_id
    if hf_class == "GPT2ForSequenceClassification":
        # transformers pools the last token that is not pad_token_id, so a batch needs one
        pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
        if pad is None:
            raise TokenizerError(
                f"exporting a GPT classifier as {hf_class} needs a pad or end-of-text token, and this "
                f"{tok.kind} tokenizer has neither"
            )
    return {"pad_token_id": pad, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}


def to_hf_model(loaded: LoadedModel, hf_class: str) -> nn.Module:
    """The transformers model (eval mode) holding `loaded`'s weights. A strict load_state_dict checks the mapping."""
    import transformers

    if loaded.arch == "gpt":
        kwargs = gpt_config_to_hf(loaded.config)
        config_class = transformers.GPT2Config
        state = gpt_state_to_hf(loaded.model.state_dict(), loaded.task)
    else:
        kwargs = bert_config_to_hf(loaded.config)
        config_class = transformers.BertConfig
        state = bert_state_to_hf(loaded.model.state_dict(), hf_class)
        dropout = getattr(loaded.model, "dropout", None)
        if isinstance(dropout, nn.Dropout) and dropout.p != loaded.config.hidden_dropout_prob:
            kwargs["classifier_dropout"] = dropout.p
    kwargs.update(_special_ids(loaded, hf_class), architectures=[hf_class])
    if loaded.task == "classification":
        labels = loaded.labels or [f"LABEL_{i}" for i in range(loaded.model.num_labels)]
        kwargs.update(id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    hf_model = getattr(transformers, hf_class)(config_class(**kwargs))
    if loaded.arch == "gpt" and not loaded.config.bias:
        # Linear and LayerNorm without bias compute exactly what they do with a zero bias
        state.update({k: torch.zeros_like(v) for k, v in hf_model.state_dict().items()
                      if k.endswith(".bias") and k not in state})
    hf_model.load_state_dict(state, strict=True)
    return hf_model.eval()


def export_model(loaded: LoadedModel, out_dir: str | Path, head: str | None = None, overwrite: bool = False) -> Path:
    """Write `loaded` as a transformers model directory (loadable with from_pretrained / AutoTokenizer) that gptframe
    also imports exactly. Written into a temporary sibling and renamed into place: a failure leaves nothing behind."""
    out = Path(out_dir).expanduser().absolute()
    check_out_dir(out, overwrite)
    hf_class = export_class(loaded.arch, loaded.task, head)
    max_length = loaded.config.block_size if loaded.arch == "gpt" else loaded.config.max_position_embeddings
    tokenizer_files = _tokenizer_files(loaded.tokenizer, max_length)
    hf_model = to_hf_model(loaded, hf_class)
    meta = {"format": GPTFRAME_FORMAT, "task": loaded.task, "arch": loaded.arch, "hf_class": hf_class,
            "labels": loaded.labels, "model_config": asdict(loaded.config)}
    def fill(tmp: Path) -> None:
        hf_model.save_pretrained(tmp)
        for name, data in tokenizer_files.items():
            (tmp / name).write_bytes(data)
        (tmp / GPTFRAME_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    out.parent.mkdir(parents=True, exist_ok=True)
    publish_dir(out, fill, replace=True)
    log.info("exported %s %s model as %s to %s", loaded.arch, loaded.task, hf_class, out)
    return out


def _tokenizer_files(tokenizer: Tokenizer, model_max_length: int) -> dict[str, bytes]:
    """gptframe's own files (exact re-import) and the ones transformers' AutoTokenizer reads."""
    ours, theirs = tokenizer.to_files(), tokenizer.to_hf_files(model_max_length)
    clash = sorted(n for n in ours.keys() & theirs.keys() if ours[n] != theirs[n])
    if clash:  # one name, two contents: one of the two loaders would read the wrong file
        raise RuntimeError(f"{tokenizer.kind} tokenizer: its gptframe and Hugging Face files differ in {clash}")
    return {**ours, **theirs}
