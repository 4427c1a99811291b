"""BERT <-> Hugging Face `transformers` (BertForPreTraining, BertForMaskedLM, BertModel,
BertForSequenceClassification, BertForQuestionAnswering, BertForTokenClassification). gptframe's BERT uses transformers' names already."""

from __future__ import annotations

import torch

from gptframe.errors import CheckpointError
from gptframe.models.bert.model import BertConfig

IMPORTS = {
    "BertForPreTraining": "mlm",
    "BertForMaskedLM": "mlm",  # no pooler and NSP head: freshly initialised
    "BertModel": "mlm",  # no heads: freshly initialised
    "BertForSequenceClassification": "classification",
    "BertForQuestionAnswering": "question_answering",
    "BertForTokenClassification": "token_classification",
}
EXPORTS = {
    "mlm": {"pretraining": "BertForPreTraining", "masked_lm": "BertForMaskedLM", "base": "BertModel"},
    "classification": {"classifier": "BertForSequenceClassification"},
    "question_answering": {"span_head": "BertForQuestionAnswering"},
    "token_classification": {"tagger": "BertForTokenClassification"},
}
BASE_CLASSES = {"bert": "BertModel"}
MAY_BE_MISSING = {"mlm": ("bert.pooler.", "cls.")}
BERT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
               "layer_norm_eps", "initializer_range")


def config_to_hf(config: BertConfig) -> dict:
    return {**{f: getattr(config, f) for f in BERT_FIELDS}, "hidden_act": "gelu", "model_type": "bert"}


def config_from_hf(hf: dict, where: str) -> BertConfig:
    for key, supported in (("hidden_act", "gelu"), ("position_embedding_type", "absolute"), ("is_decoder", False),
                           ("add_cross_attention", False)):
        if hf.get(key, supported) != supported:
            raise CheckpointError(f"{where}: {key}={hf[key]!r} is not supported (gptframe's BERT: {supported!r})")
    values = {f: hf[f] for f in BERT_FIELDS if f in hf}
    values.setdefault("vocab_size", 30522)  # transformers' default, where the vocab size is not written
    return BertConfig(**values)


BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def state_to_hf(state: dict[str, torch.Tensor], task: str, hf_class: str) -> dict[str, torch.Tensor]:
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


def state_from_hf(state: dict[str, torch.Tensor], task: str, where: str, config=None) -> dict[str, torch.Tensor]:
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


def special_token_ids(tokenizer, hf_class: str) -> dict:
    return {"pad_token_id": tokenizer.pad_id, "bos_token_id": None, "eos_token_id": None}


def export_kwargs(model: torch.nn.Module) -> dict:
    """A classifier fine-tuned with its own dropout keeps it (transformers' `classifier_dropout`)."""
    dropout = getattr(model, "dropout", None)
    if isinstance(dropout, torch.nn.Dropout) and dropout.p != model.config.hidden_dropout_prob:
        return {"classifier_dropout": dropout.p}
    return {}


def import_model_kwargs(hf: dict, task: str) -> dict:
    if task in ("classification", "token_classification") and hf.get("classifier_dropout") is not None:
        return {"classifier_dropout": hf["classifier_dropout"]}
    return {}
