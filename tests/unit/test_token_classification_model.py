"""BertForTokenClassification against transformers: an imported random-init model gives the same logits, an export
loads with AutoModelForTokenClassification, and gptframe.pipeline("token-classification") returns what
transformers.pipeline("token-classification") returns on the same directory."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import AutoModelForTokenClassification, BertConfig, BertForTokenClassification, BertTokenizerFast
from transformers import pipeline as hf_pipeline

import gptframe
from data_pipelines.tokenizers import WordPieceTokenizer
from gptframe.interop.hf import export_model
from gptframe.loading import load_model

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC"]  # MISC: a tag without B-/I-, as the pipeline allows
SENTENCES = [
    "Peter Blackburn went to the U.S. and to Zürich yesterday, didn't he?",
    "ROMEO: What say you, fair Juliet of Verona? xylophonically yours",
    "A" * 120 + " is unknown, as is the snowman ☃ here.",
]


@pytest.fixture(scope="module")
def hf_dir(shakespeare_text, tmp_path_factory):
    """A random BertForTokenClassification with a WordPiece vocabulary built here, saved with its tokenizer."""
    lines = [line for line in shakespeare_text[:100_000].split("\n") if line.strip()]
    ours = WordPieceTokenizer.train(lambda: lines, vocab_size=700, lowercase=False)
    directory = tmp_path_factory.mktemp("ner_hf")
    (directory / "vocab.txt").write_text("\n".join(ours.vocab_lines()) + "\n", encoding="utf-8")
    arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    BertTokenizerFast(**{arg: str(directory / "vocab.txt")}, do_lower_case=False).save_pretrained(str(directory))
    config = BertConfig(vocab_size=ours.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128, num_labels=len(NAMES),
                        id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    torch.manual_seed(0)
    model = BertForTokenClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(40)  # confident, varied labels from a random model
    model.save_pretrained(str(directory))
    return directory, model


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 700, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_imported_model_gives_transformers_logits(hf_dir):
    directory, reference = hf_dir
    loaded = load_model(directory)
    assert loaded.task == "token_classification" and loaded.labels == NAMES
    assert not any(k.startswith("bert.pooler") for k in loaded.model.state_dict())  # as transformers: no pooler
    batch = _batch()
    with torch.no_grad():
        ours, theirs = loaded.model(**batch), reference(**batch).logits
    keep = batch["attention_mask"].bool()
    assert ours.shape == theirs.shape == (3, 20, len(NAMES))
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-4, rtol=0)


def test_export_loads_with_auto_model_for_token_classification(hf_dir, tmp_path):
    loaded = load_model(hf_dir[0])
    out = export_model(loaded, tmp_path / "export")
    exported = AutoModelForTokenClassification.from_pretrained(str(out)).eval()
    assert type(exported).__name__ == "BertForTokenClassification"
    assert exported.config.id2label == dict(enumerate(NAMES))
    batch = _batch(1)
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, loaded.model(**batch), atol=1e-5, rtol=0)
    again = load_model(out)  # and gptframe imports its own export exactly
    assert again.task == "token_classification" and again.labels == NAMES


def _assert_same_entities(mine: list[dict], theirs: list[dict]) -> None:
    assert len(mine) == len(theirs) > 0
    for m, t in zip(mine, theirs, strict=True):
        assert m["score"] == pytest.approx(float(t["score"]), abs=1e-4)
        assert {k: v for k, v in m.items() if k != "score"} == {k: v for k, v in t.items() if k != "score"}


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "max", "average"])
def test_pipeline_equals_transformers_pipeline(hf_dir, strategy):
    directory, _ = hf_dir
    ours = gptframe.pipeline("token-classification", model=str(directory), device="cpu")
    theirs = hf_pipeline("token-classification", model=str(directory), tokenizer=str(directory),
                         aggregation_strategy=strategy, device="cpu")
    results = ours(SENTENCES, aggregation_strategy=strategy)
    kinds = set()
    for sentence, mine in zip(SENTENCES, results, strict=True):
        _assert_same_entities(mine, theirs(sentence))
        kinds |= {e.get("entity", e.get("entity_group")) for e in mine}
    assert len(kinds) >= 3  # several labels occur, so grouping is exercised
    assert ours(SENTENCES[0], aggregation_strategy=strategy) == results[0]  # one text: its list


@pytest.mark.parametrize("strategy", ["simple", "first", "max"])
def test_pipeline_long_text_windows_equal_transformers_stride(hf_dir, strategy):
    directory, _ = hf_dir
    max_len, stride = 16, 5
    theirs = hf_pipeline("token-classification", model=str(directory), tokenizer=str(directory),
                         aggregation_strategy=strategy, stride=stride, device="cpu")
    theirs.tokenizer.model_max_length = max_len
    text = " ".join(SENTENCES[:2]) + " Juliet and Romeo met in Verona, far from Mantua."
    ours = gptframe.pipeline("token-classification", model=str(directory), device="cpu")
    mine = ours(text, aggregation_strategy=strategy, stride=stride, max_seq_len=max_len)
    _assert_same_entities(mine, theirs(text))
    assert mine[-1]["end"] > 100  # entities from the later windows too


def test_pipeline_truncates_as_transformers_without_stride(hf_dir):
    directory, _ = hf_dir
    theirs = hf_pipeline("token-classification", model=str(directory), tokenizer=str(directory), device="cpu")
    theirs.tokenizer.model_max_length = 16
    ours = gptframe.pipeline("token-classification", model=str(directory), device="cpu")
    _assert_same_entities(ours(SENTENCES[0], max_seq_len=16), theirs(SENTENCES[0]))


def test_pipeline_rejects_stride_without_aggregation_and_unknown_strategies(hf_dir):
    ours = gptframe.pipeline("token-classification", model=str(hf_dir[0]), device="cpu")
    with pytest.raises(ValueError, match="aggregation_strategy other than 'none'"):
        ours(SENTENCES[0], stride=4)
    with pytest.raises(ValueError, match="aggregation_strategy must be one of"):
        ours(SENTENCES[0], aggregation_strategy="mean")
