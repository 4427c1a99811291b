"""Labeled data: file formats, label maps, clear errors, encoding for BERT and GPT, the epoch sampler, and the
bundled Shakespeare speaker task."""

import itertools
import json

import numpy as np
import pytest

from data_pipelines.classification import (
    EncodedExamples,
    EpochBatchSampler,
    encode_examples,
    label_ids,
    label_names,
    read_labeled,
)
from data_pipelines.downstream import shakespeare_speakers
from data_pipelines.errors import DataError
from data_pipelines.tokenizers import CharTokenizer, WordPieceTokenizer


def _write(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        sep = "\t" if kind == "tsv" else ","
        keys = list(rows[0])
        lines = [sep.join(keys)] + [sep.join(str(r[k]) for k in keys) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_reads_every_format_with_optional_pairs(tmp_path, kind):
    rows = [{"text": "good film", "text_pair": "yes", "label": "pos"}, {"text": "bad film", "text_pair": "no", "label": "neg"}]
    ex = read_labeled(_write(tmp_path / f"d.{kind}", rows, kind), "text", "text_pair", "label")
    assert ex.texts == ["good film", "bad film"] and ex.pairs == ["yes", "no"] and ex.labels == ["pos", "neg"]
    no_pairs = read_labeled(tmp_path / f"d.{kind}", "text", "missing_pair_column", "label")
    assert no_pairs.pairs is None


def test_configurable_columns_and_int_labels(tmp_path):
    rows = [{"sentence": f"s{i}", "y": i % 11} for i in range(22)]
    ex = read_labeled(_write(tmp_path / "d.jsonl", rows, "jsonl"), "sentence", None, "y")
    names = label_names(ex.labels)
    assert names == [str(i) for i in range(11)]  # numerically, not "0", "1", "10", "2", ...
    assert label_ids(ex, names).tolist() == [i % 11 for i in range(22)]
    assert label_names(["b", "a", "c", "a"]) == ["a", "b", "c"]


def test_bad_labeled_input_gives_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_labeled(tmp_path / "nope.csv", "text", None, "label")
    path = _write(tmp_path / "d.csv", [{"text": "a", "category": "x"}], "csv")
    with pytest.raises(DataError, match=r"no 'label' column .*data.label_column.*\['category', 'text'\]"):
        read_labeled(path, "text", None, "label")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a JSON object"):
        read_labeled(bad_json, "text", None, "label")
    empty_label = _write(tmp_path / "e.jsonl", [{"text": "a", "label": ""}], "jsonl")
    with pytest.raises(DataError, match=r"e.jsonl:1: needs a text"):
        read_labeled(empty_label, "text", None, "label")
    with pytest.raises(DataError, match="format"):
        read_labeled(_write(tmp_path / "d.txt", [{"text": "a", "label": 1}], "csv"), "text", None, "label")
    train = read_labeled(_write(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], "jsonl"),
                         "text", None, "label")
    val = read_labeled(_write(tmp_path / "v.jsonl", [{"text": "c", "label": "z"}], "jsonl"), "text", None, "label")
    with pytest.raises(DataError, match=r"v.jsonl: labels \['z'\] never occur in the training data"):
        label_ids(val, label_names(train.labels))


def test_bert_encoding_matches_the_tokenizer_pair_template_and_truncates(shakespeare_text):
    tok = WordPieceTokenizer.train(lambda: shakespeare_text[:100_000].splitlines(), vocab_size=300)
    ids, types = encode_examples(tok, ["To be, or not to be"], ["that is the question"], 64, cls_sep=True)
    assert (ids[0], types[0]) == tok.encode_pair("To be, or not to be", "that is the question")
    long_text = shakespeare_text[:2000]
    ids, types = encode_examples(tok, [long_text], ["short"], 32, cls_sep=True)
    assert len(ids[0]) == 32 and ids[0][0] == tok.cls_id and ids[0][-1] == tok.sep_id
    assert ids[0][-2] == tok.encode("short")[-1]  # the longer segment is trimmed first
    ids, _ = encode_examples(tok, [long_text], None, 16, cls_sep=True)
    assert len(ids[0]) == 16 and ids[0][-1] == tok.sep_id


def test_gpt_encoding_keeps_the_beginning():
    tok = CharTokenizer.train(["abcdef"], with_eos=True)
    ids, types = encode_examples(tok, ["abcdef"], ["fed"], 5, cls_sep=False)
    assert ids[0] == tok.encode("abcde") and types[0] == [0] * 5
    ids, _ = encode_examples(tok, ["ab"], ["c"], 10, cls_sep=False)
    assert ids[0] == [*tok.encode("ab"), tok.eos_id, *tok.encode("c")]


def test_padded_batches_mark_real_tokens():
    data = EncodedExamples([[5, 6, 7], [8]], [[0, 0, 1], [0]], np.array([1, 0]), pad_id=0)
    batch = data[[0, 1]]
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]] and batch["labels"].tolist() == [1, 0]


def test_epoch_sampler_visits_every_example_each_epoch_resumes_and_splits_ranks():
    n, bs = 23, 4
    stream = EpochBatchSampler(n, bs, seed=3)
    batches = list(itertools.islice(stream, 12))  # 2 epochs of 6 batches
    for epoch in (batches[:6], batches[6:]):
        seen = [i for b in epoch for i in b]
        assert set(seen) == set(range(n)) and len(seen) == 24  # the last batch wraps once
    assert batches[:6] != batches[6:]  # reshuffled
    resumed = list(itertools.islice(EpochBatchSampler(n, bs, seed=3, start_batch=7), 5))
    assert resumed == batches[7:12]
    ranks = [list(itertools.islice(EpochBatchSampler(n, 2, 3, rank=r, world_size=2), 6)) for r in (0, 1)]
    for b0, b1, whole in zip(*ranks, batches[:6], strict=True):
        assert b0 + b1 == whole  # two ranks of batch 2 = one process of batch 4


def test_speaker_task_is_stratified_deterministic_and_leak_free(shakespeare_text, tmp_path):
    built = shakespeare_speakers.build(shakespeare_text, num_speakers=8, val_fraction=0.2)
    stats = built["stats"]
    assert len(stats["speakers"]) == 8 and stats["num_val"] > 200 and stats["num_train"] > 800
    val_speakers = {p.speaker for p in built["val"]}
    assert val_speakers == set(stats["speakers"])
    counts = {s: sum(p.speaker == s for p in built["train"] + built["val"]) for s in stats["speakers"]}
    for s in stats["speakers"]:  # stratified: every speaker keeps its share in validation
        assert abs(sum(p.speaker == s for p in built["val"]) - round(counts[s] * 0.2)) <= 1  # (repeated speeches)
    baseline = max(sum(p.speaker == s for p in built["val"]) for s in stats["speakers"]) / stats["num_val"]
    assert stats["majority_baseline_accuracy"] == pytest.approx(baseline)
    pretrain = built["pretrain"]
    # no validation passage is pretrained on, nor a repetition of it by the same speaker
    assert all(f"\n\n{p.speaker}:\n{p.text}\n\n" not in pretrain for p in built["val"])
    assert all(p.text not in pretrain for p in built["val"] if len(p.text) > 60)
    assert sum(p.text in pretrain for p in built["train"]) > 0.95 * len(built["train"])
    stats_on_disk = shakespeare_speakers.write(tmp_path / "task")
    assert stats_on_disk == stats
    rows = [json.loads(line) for line in (tmp_path / "task" / "val.jsonl").read_text().splitlines()]
    assert [(r["text"], r["label"]) for r in rows] == [(p.text, p.speaker) for p in built["val"]]
    assert not list(tmp_path.glob(".task.*"))  # the temporary dir was renamed into place
