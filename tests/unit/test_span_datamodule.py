"""DataModules of question answering and token classification: resumable, rank-sliced training streams, and
evaluation shares that give every rank the same number of batches and sum to the single-process scores."""

from __future__ import annotations

import json
import random
from itertools import islice
from types import SimpleNamespace

import numpy as np
import pytest

from data_pipelines.datamodule import ClassificationDataModule
from data_pipelines.question_answering import QAFeatureDataset, build_qa_features, read_qa
from data_pipelines.question_answering_eval import QAEvaluation, Window, predict_answer, squad_metrics
from data_pipelines.sampling import PAD_KEY
from data_pipelines.span_datamodule import QuestionAnsweringDataModule
from data_pipelines.token_classification import TokenClassificationExamples, read_tagged, tag_names
from data_pipelines.token_classification_eval import (
    EntityCounts,
    count_entities,
    entity_types,
    tags_of_labeled_tokens,
)
from data_pipelines.tokenizers import WordPieceTokenizer


def on_rank(module, rank: int, world: int, step: int = 0):
    """The module as Lightning sets it up on `rank` of `world` after `step` optimizer steps."""
    module.trainer = SimpleNamespace(global_rank=rank, world_size=world, global_step=step, accumulate_grad_batches=1)
    return module


@pytest.fixture(scope="module")
def tokenizer(shakespeare_text):
    lines = [line for line in shakespeare_text[:100_000].split("\n") if line.strip()]
    return WordPieceTokenizer.train(lambda: lines, vocab_size=600)


@pytest.fixture(scope="module")
def qa(shakespeare_text, tokenizer, tmp_path_factory):
    rng = random.Random(0)
    rows = []
    for i in range(23):
        start = rng.randrange(0, 150_000)
        context = shakespeare_text[start : start + rng.choice([100, 700])]
        a = context.find(" ", 10) + 1
        answers = {"text": [], "answer_start": []} if i % 4 == 0 else {"text": [context[a : a + 7]], "answer_start": [a]}
        rows.append({"id": f"q{i}", "question": "who speaks?", "context": context, "answers": answers})
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    examples = read_qa(path)
    features = build_qa_features(examples.examples, tokenizer, max_seq_len=48, doc_stride=16)
    dataset = QAFeatureDataset(features, tokenizer.pad_id)
    return examples, dataset


def logits_of(feature_index: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Model output stand-in: a function of the window alone, whichever rank and batch it lands in."""
    rng = np.random.default_rng(feature_index)
    return rng.normal(size=length).astype(np.float32), rng.normal(size=length).astype(np.float32)


def test_qa_training_stream_resumes_and_slices_by_rank(qa):
    examples, dataset = qa
    module = QuestionAnsweringDataModule(dataset, dataset, examples.examples, batch_size=4, seed=7)
    whole = [b["feature_index"].tolist() for b in islice(iter(on_rank(module, 0, 1).train_dataloader()), 12)]
    resumed = [b["feature_index"].tolist() for b in islice(iter(on_rank(module, 0, 1, step=5).train_dataloader()), 7)]
    assert resumed == whole[5:]
    # two ranks at half the batch see exactly what one process sees
    half = QuestionAnsweringDataModule(dataset, dataset, examples.examples, batch_size=2, seed=7)
    ranks = [[b["feature_index"].tolist() for b in islice(iter(on_rank(half, r, 2).train_dataloader()), 12)]
             for r in range(2)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == whole


def test_qa_evaluation_shares_sum_to_single_process_scores(qa):
    examples, dataset = qa
    features = dataset.features
    module = QuestionAnsweringDataModule(dataset, dataset, examples.examples, batch_size=3, seed=7)
    v2 = examples.version_2_with_negative
    single = {}
    for i, group in enumerate(module.val_groups):
        windows = [Window(*logits_of(k, len(features.input_ids[k])), features.offsets[k]) for k in group]
        single[examples.examples[i].id] = predict_answer(examples.examples[i].context, windows, v2).answer.text
    expected = squad_metrics(single, examples.examples, v2)
    assert expected["NoAns_total"] > 0 and expected["HasAns_total"] > 0
    for world in (1, 2, 3):
        total, batch_counts, padding = 0, [], 0
        for rank in range(world):
            batches = list(on_rank(module, rank, world).val_dataloader())
            batch_counts.append(len(batches))
            evaluation = QAEvaluation(examples.examples, features, v2)
            for batch in batches:  # a model's [batch, length] logits: padded rows and columns included
                rows = [logits_of(k, int(n)) if k != PAD_KEY else (np.zeros(int(n)),) * 2
                        for k, n in zip(batch["feature_index"].tolist(), batch["attention_mask"].sum(1), strict=True)]
                width = batch["input_ids"].shape[1]
                starts, ends = (np.stack([np.pad(r[j], (0, width - len(r[j])), constant_values=-1e4) for r in rows])
                                for j in (0, 1))
                evaluation.add_batch(batch["feature_index"].numpy(), starts, ends)
                padding += int((batch["feature_index"] == PAD_KEY).sum())
                assert (batch["start_positions"][batch["feature_index"] == PAD_KEY] == -100).all()  # no loss
            total = total + evaluation.sums()
        assert len(set(batch_counts)) == 1  # every rank runs as many batches
        assert padding > 0 or world == 1
        assert QAEvaluation.metrics_from_sums(total, v2) == pytest.approx(expected)


def test_qa_evaluation_refuses_a_question_split_across_ranks(qa):
    examples, dataset = qa
    features = dataset.features
    split = next(group for group in features.features_of(len(examples)) if len(group) > 1)
    evaluation = QAEvaluation(examples.examples, features, True)
    n = len(features.input_ids[split[0]])
    evaluation.add_batch(np.array([split[0]]), np.zeros((1, n)), np.zeros((1, n)))
    with pytest.raises(ValueError, match=r"1 of its \d+ windows were evaluated here"):
        evaluation.sums()


def test_token_classification_evaluation_sums_over_ranks(shakespeare_text, tokenizer, tmp_path):
    rng = random.Random(1)
    words = shakespeare_text[:50_000].split()
    lines = []
    for _ in range(29):
        start = rng.randrange(len(words) - 20)
        for w in words[start : start + rng.randrange(2, 20)]:
            lines.append(f"{w}\t{'B-PER' if w.istitle() else 'O'}")
        lines.append("")
    (tmp_path / "t.conll").write_text("\n".join(lines), encoding="utf-8")
    sentences = read_tagged(tmp_path / "t.conll")
    names = tag_names(sentences)
    data = TokenClassificationExamples.build(tokenizer, sentences, names, max_seq_len=32)
    module = ClassificationDataModule(data, data, batch_size=4, seed=3)
    types = entity_types(names)

    def counts_of(batches) -> EntityCounts:
        total = EntityCounts.zeros(types)
        for batch in batches:
            predictions = (batch["input_ids"] % len(names)).numpy()  # any function of the tokens
            gold, predicted = tags_of_labeled_tokens(predictions, batch["labels"].numpy(), names)
            total = total + count_entities(gold, predicted, types)
        return total

    single = counts_of(on_rank(module, 0, 1).val_dataloader())
    assert single.tokens_total == sum(sum(label >= 0 for label in labels) for labels in data.labels)  # each word once
    for world in (2, 3):
        loaders = [list(on_rank(module, r, world).val_dataloader()) for r in range(world)]
        assert len({len(batches) for batches in loaders}) == 1
        summed = EntityCounts.from_array(types, sum(counts_of(batches).as_array() for batches in loaders))
        assert (summed.counts == single.counts).all() and summed.tokens_total == single.tokens_total
        assert summed.tokens_correct == single.tokens_correct
