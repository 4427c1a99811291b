"""task=token_classification through the real code path (Hydra config -> run_training -> Lightning, and the CLIs):
fine-tuning from a tiny MLM checkpoint or a Hugging Face directory, metrics against seqeval, exact resume, export, and
bad input. Tagged sentences are built from Shakespeare with a rule a tiny model can learn (speakers are
PER, titles MISC)."""

from __future__ import annotations

import inspect
import json
import math
import random

import pytest
import torch
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2
from transformers import AutoModelForTokenClassification, BertTokenizerFast, DataCollatorForTokenClassification
from transformers import BertConfig as HFBertConfig
from transformers import BertForTokenClassification as HFBertForTokenClassification
from transformers import BertModel as HFBertModel

from data_pipelines.token_classification import TokenClassificationExamples, read_tagged, tag_names
from gptframe.config import to_typed
from gptframe.errors import ConfigError
from gptframe.loading import load_model
from gptframe.models.factory import build_model, transfer_weights
from gptframe.training.run import run_training
from tests.conftest import TINY_BERT, compose, run_cli

FINETUNE = ["task=token_classification", "trainer.max_epochs=4", "data.batch_size=16", "task.lr=5e-3",
            "task.warmup_steps=2", "task.max_seq_len=48", "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=2"]


def _train(run_dir, cache_dir, *overrides):
    cfg = compose([f"data.cache_dir={cache_dir}", *overrides])
    return run_training(to_typed(cfg), run_dir, cfg)


TITLES = {"lord", "king", "queen", "duke", "sir", "madam", "god", "lady", "master", "father"}


def _tag(words: list[str]) -> list[str]:
    """Speakers ("ROMEO:", "First Citizen:") are PER, titles MISC: rules the (lowercasing) tokenizer keeps visible."""
    tags = []
    for i, word in enumerate(words):
        if word.endswith(":"):
            tag = "I-PER" if tags and tags[-1] == "B-PER" else "B-PER"
        elif i + 1 < len(words) and words[i + 1].endswith(":") and word[:1].isupper() and word.isalpha():
            tag = "B-PER"
        elif word.lower().strip(",.;!?'") in TITLES:
            tag = "B-MISC"
        else:
            tag = "O"
        tags.append(tag)
    return tags


def tagged_sentences(text: str, n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    words = text.split()
    out = []
    for _ in range(n):
        start = rng.randrange(len(words) - 30)
        sentence = words[start : start + rng.randrange(4, 20)]
        out.append((sentence, _tag(sentence)))
    return out


def write_ner_data(directory, shakespeare_text: str):
    """train.conll (CoNLL, with a POS-like middle column and -DOCSTART-) and val.jsonl: 240 and 70 sentences."""
    directory.mkdir(parents=True, exist_ok=True)
    train, val = tagged_sentences(shakespeare_text, 240, 0), tagged_sentences(shakespeare_text[500_000:], 70, 1)
    blocks = ["-DOCSTART- -X- O\n"] + ["".join(f"{w}\tX\t{t}\n" for w, t in zip(*s, strict=True)) for s in train]
    (directory / "train.conll").write_text("\n".join(blocks), encoding="utf-8")
    (directory / "val.jsonl").write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in val))
    return directory


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory, shakespeare_text):
    return write_ner_data(tmp_path_factory.mktemp("ner"), shakespeare_text)


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory, cache_dir, shakespeare_text):
    corpus = tmp_path_factory.mktemp("corpus") / "small.txt"
    corpus.write_text(shakespeare_text[:120_000], encoding="utf-8")
    run_dir = tmp_path_factory.mktemp("mlm")
    _train(run_dir, cache_dir, *TINY_BERT, f"data.path={corpus}", "trainer.max_steps=30", "trainer.val_check_interval=30")
    return run_dir / "checkpoints" / "last.ckpt"


def _data(ner_data) -> list[str]:
    return [f"data.train_path={ner_data}/train.conll", f"data.val_path={ner_data}/val.jsonl"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, cache_dir, mlm_checkpoint, ner_data):
    run_dir = tmp_path_factory.mktemp("ner_run")
    summary = _train(run_dir, cache_dir, *FINETUNE, f"model.init_from={mlm_checkpoint}", *_data(ner_data))
    return run_dir, summary


def _seqeval(loaded, ner_data, max_seq_len: int = 48, **mode) -> dict[str, float]:
    """The val set's entity scores computed here with seqeval, on the first sub-token of each word (run_ner.py)."""
    val = read_tagged(ner_data / "val.jsonl")
    examples = TokenClassificationExamples.build(loaded.tokenizer, val, loaded.labels, max_seq_len)
    gold, predicted = [], []
    for i in range(len(examples)):
        batch = examples[[i]]
        with torch.no_grad():
            logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        keep = batch["labels"][0] != -100
        gold.append([loaded.labels[j] for j in batch["labels"][0][keep].tolist()])
        predicted.append([loaded.labels[j] for j in logits.argmax(-1)[keep].tolist()])
    return {"f1": f1_score(gold, predicted, **mode), "precision": precision_score(gold, predicted, **mode),
            "recall": recall_score(gold, predicted, **mode), "accuracy": accuracy_score(gold, predicted)}


def test_fine_tunes_from_an_mlm_checkpoint_with_seqeval_metrics(tuned, ner_data):
    run_dir, summary = tuned
    train_sentences = len(read_tagged(ner_data / "train.conll"))
    assert summary["task"] == "token_classification" and summary["arch"] == "bert"
    assert summary["step"] == 4 * math.ceil(train_sentences / 16)
    assert summary["labels"] == ["B-MISC", "B-PER", "I-PER", "O"] and summary["scheme"] == "IOB2"
    assert summary["val_f1"] > 0.1  # it learns the rule (a constant "O" tagger scores 0; observed ~0.16 in 60 steps)
    assert summary["best_val_f1"] >= summary["val_f1"] - 1e-6 and "best-step" in summary["best_checkpoint"]
    loaded = load_model(summary["checkpoint"])
    assert loaded.task == "token_classification" and loaded.labels == summary["labels"]
    reference = _seqeval(loaded, ner_data)
    for key in ("f1", "precision", "recall", "accuracy"):
        assert summary[f"val_{key}"] == pytest.approx(reference[key], abs=1e-6), key
    header = (run_dir / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "val/f1", "val/precision", "val/recall", "val/accuracy"} <= set(header)


def test_stopped_and_resumed_equals_uninterrupted_in_strict_mode(tmp_path, cache_dir, mlm_checkpoint, ner_data):
    common = [*FINETUNE, f"model.init_from={mlm_checkpoint}", *_data(ner_data), "task.lr_decay_steps=60",
              "task.mode=strict", "task.scheme=IOB2"]
    straight = _train(tmp_path / "straight", cache_dir, *common)
    _train(tmp_path / "resumed", cache_dir, *common, "trainer.max_epochs=1")
    resumed = _train(tmp_path / "resumed", cache_dir, *common)
    assert resumed["step"] == straight["step"]
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-5)
    assert resumed["val_f1"] == pytest.approx(straight["val_f1"], abs=1e-9)
    strict = _seqeval(load_model(resumed["checkpoint"]), ner_data, mode="strict", scheme=IOB2)
    assert resumed["val_f1"] == pytest.approx(strict["f1"], abs=1e-6) and resumed["val_f1"] > 0


@pytest.fixture(scope="module")
def hf_bert_dir(tmp_path_factory, mlm_checkpoint):
    """A random transformers BertModel directory (no heads), with the MLM run's vocabulary."""
    tokenizer = load_model(mlm_checkpoint).tokenizer
    directory = tmp_path_factory.mktemp("hf_bert")
    (directory / "vocab.txt").write_text("\n".join(tokenizer.vocab_lines()) + "\n", encoding="utf-8")
    arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    BertTokenizerFast(**{arg: str(directory / "vocab.txt")}).save_pretrained(str(directory))
    config = HFBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    HFBertModel(config).save_pretrained(str(directory))
    return directory


def test_a_bert_directory_initialises_the_tagger_backbone(hf_bert_dir):
    """A BertModel directory imports with a pooler (freshly made); the tagger has none and takes everything else."""
    source = load_model(hf_bert_dir)
    target = build_model("token_classification", source.config, num_labels=5)
    copied = transfer_weights(source.model, target)
    assert copied == "the BertModel backbone (new BertForTokenClassification heads)"
    theirs = HFBertModel.from_pretrained(str(hf_bert_dir)).state_dict()
    mine = target.bert.state_dict()
    assert mine.keys() == {k for k in theirs if not k.startswith("pooler.")}
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.fixture(scope="module")
def hf_tagger_dir(tmp_path_factory, hf_bert_dir, ner_data):
    """A random transformers BertForTokenClassification without dropout, its labels in the data's (sorted) order."""
    labels = tag_names(read_tagged(ner_data / "train.conll"))
    config = HFBertConfig.from_pretrained(str(hf_bert_dir), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                          id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    directory = tmp_path_factory.mktemp("hf_tagger")
    torch.manual_seed(1)
    HFBertForTokenClassification(config).save_pretrained(str(directory))
    BertTokenizerFast.from_pretrained(str(hf_bert_dir)).save_pretrained(str(directory))
    return directory


def _plain_loop(model_dir, ner_data, steps: int, lr: float, weight_decay: float) -> HFBertForTokenClassification:
    """run_ner.py's recipe written with transformers and torch alone (as benchmarks/bench_token_classification.py's
    reference arm): first-sub-token labels, AdamW without decay on vectors, cosine to 0, clipping at 1.0. The whole
    training set is one batch, so the steps see the same data in any sampling order."""
    tokenizer = BertTokenizerFast.from_pretrained(str(model_dir))
    model = HFBertForTokenClassification.from_pretrained(str(model_dir)).train()
    train = read_tagged(ner_data / "train.conll")
    rows = []
    for words, tags in zip(train.words, train.tags, strict=True):
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=48)
        word_ids = enc.word_ids()
        labels = [-100 if w is None or (i and word_ids[i - 1] == w) else model.config.label2id[tags[w]]
                  for i, w in enumerate(word_ids)]
        rows.append({**enc, "labels": labels})
    batch = DataCollatorForTokenClassification(tokenizer)(rows)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for _ in range(steps):
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return model


def test_training_matches_a_plain_transformers_loop_step_by_step(tmp_path, cache_dir, hf_tagger_dir, ner_data):
    """The optimisation against an independent reference: without dropout and with the training set as one batch
    (nothing random left), gptframe's weights after 4 steps equal those of run_ner's recipe in plain transformers +
    torch: the loss over first sub-tokens, the AdamW groups, the cosine schedule and clipping all agree."""
    steps, lr = 4, 3e-3
    summary = _train(tmp_path / "run", cache_dir, "task=token_classification", f"model.init_from={hf_tagger_dir}",
                     *_data(ner_data), "data.batch_size=240", f"trainer.max_epochs={steps}", f"task.lr={lr}",
                     "task.warmup_steps=0", "task.min_lr=0", "task.weight_decay=0.01", "task.max_seq_len=48",
                     "trainer.enable_progress_bar=false")
    assert summary["step"] == steps and len(read_tagged(ner_data / "train.conll")) == 240  # one batch per epoch
    mine = load_model(summary["checkpoint"]).model.state_dict()
    theirs = _plain_loop(hf_tagger_dir, ner_data, steps, lr, weight_decay=0.01).state_dict()
    start = HFBertForTokenClassification.from_pretrained(str(hf_tagger_dir)).state_dict()
    assert mine.keys() == theirs.keys()
    tolerance = 2e-5
    moved = max((theirs[k] - start[k]).abs().max().item() for k in theirs)
    assert moved > 100 * tolerance  # AdamW moved weights by up to ~lr per step: far more than the tolerance
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], atol=tolerance, rtol=0, msg=key)


def _relabelled_tagger(source_dir, directory, order: list[int], names: list[str] | None = None):
    """The tagger in `source_dir` with its labels (and head rows) in another order: the same model, label by label;
    `names` renames them (another label set)."""
    model = HFBertForTokenClassification.from_pretrained(str(source_dir))
    old = model.config.id2label
    labels = [old[i] for i in order] if names is None else names
    model.config.id2label, model.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order])
        model.classifier.bias.copy_(model.classifier.bias[order])
    model.save_pretrained(str(directory))
    BertTokenizerFast.from_pretrained(str(source_dir)).save_pretrained(str(directory))
    return model.eval()


@pytest.mark.parametrize("labels", ["reordered", "placeholders", "other"])
def test_an_init_model_with_the_data_labels_keeps_its_head_in_any_label_order(tmp_path, cache_dir, hf_tagger_dir,
                                                                             ner_data, labels):
    """A tagger whose id2label lists the data's tags in another order keeps its head, each row under its own tag (as
    run_ner.py takes the model's label order); with transformers' placeholders LABEL_i it keeps it by position; one
    with other tags gets a new head rather than rows under wrong names."""
    n = len(HFBertForTokenClassification.from_pretrained(str(hf_tagger_dir)).config.id2label)
    order = list(reversed(range(n))) if labels == "reordered" else list(range(n))
    names = {"reordered": None, "placeholders": [f"LABEL_{i}" for i in range(n)],
             "other": [f"B-T{i}" for i in range(n)]}[labels]
    theirs = _relabelled_tagger(hf_tagger_dir, tmp_path / "hf", order, names)
    summary = _train(tmp_path / "run", cache_dir, "task=token_classification", f"model.init_from={tmp_path / 'hf'}",
                     *_data(ner_data), "data.batch_size=240", "trainer.max_epochs=1", "task.lr=1e-12",
                     "task.max_seq_len=48", "trainer.enable_progress_bar=false")
    mine = load_model(summary["checkpoint"])
    batch = TokenClassificationExamples.build(mine.tokenizer, read_tagged(ner_data / "val.jsonl"), mine.labels,
                                              48)[list(range(8))]
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        my_logits, their_logits = mine.model(**inputs), theirs(**inputs).logits
    if labels == "other":  # the data's own tags, sorted, and a freshly initialised head
        assert mine.labels == tag_names(read_tagged(ner_data / "train.conll"))
        assert not torch.allclose(mine.model.classifier.weight, theirs.classifier.weight, atol=1e-3)
    elif labels == "placeholders":  # unnamed: the data's sorted tags, the head row by row
        assert mine.labels == tag_names(read_tagged(ner_data / "train.conll"))
        torch.testing.assert_close(my_logits, their_logits, atol=1e-4, rtol=0)
    else:  # every tag's logit is the one the Hugging Face model gives that tag
        by_name = [theirs.config.label2id[name] for name in mine.labels]
        torch.testing.assert_close(my_logits, their_logits[..., by_name], atol=1e-4, rtol=0)


@pytest.mark.slow  # a training run and a gptframe-export process
def test_fine_tunes_from_a_hugging_face_directory_and_exports(tmp_path, cache_dir, hf_bert_dir, ner_data):
    summary = _train(tmp_path / "run", cache_dir, *FINETUNE, "trainer.max_epochs=1", f"model.init_from={hf_bert_dir}",
                     *_data(ner_data))
    assert summary["init_from"] == str(hf_bert_dir) and summary["task"] == "token_classification"
    out = tmp_path / "export"
    proc = run_cli("gptframe-export", f"ckpt={summary['checkpoint']}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    exported = AutoModelForTokenClassification.from_pretrained(str(out)).eval()
    assert exported.config.id2label == dict(enumerate(summary["labels"]))
    loaded = load_model(summary["checkpoint"])
    batch = TokenClassificationExamples.build(loaded.tokenizer, read_tagged(ner_data / "val.jsonl"), loaded.labels,
                                              48)[list(range(8))]
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(exported(**inputs).logits, loaded.model(**inputs), atol=1e-5, rtol=0)


def test_trains_from_scratch_with_a_tokenizer_built_on_the_sentences(tmp_path, cache_dir, ner_data):
    summary = _train(tmp_path / "run", cache_dir, *[o for o in TINY_BERT if not o.startswith(("task", "trainer.max_steps"))],
                     *FINETUNE, "trainer.max_epochs=1", "tokenizer.vocab_size=300", *_data(ner_data))
    assert summary["tokenizer"]["kind"] == "wordpiece" and summary["tokenizer"]["vocab_size"] <= 300
    assert 0.0 <= summary["val_f1"] <= 1.0 and summary["step"] > 0


def test_strict_mode_needs_the_data_scheme(tmp_path, cache_dir, mlm_checkpoint, ner_data):
    for scheme in ("null", "IOBES"):
        with pytest.raises(ConfigError, match="task.mode=strict reads entities under task.scheme=.*set task.scheme=IOB2"):
            _train(tmp_path / "run", cache_dir, *FINETUNE, f"model.init_from={mlm_checkpoint}", *_data(ner_data),
                   "task.mode=strict", f"task.scheme={scheme}")
    assert not (tmp_path / "run").exists()


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.slow  # three gptframe-train processes (~5 s of imports each on an idle CPU)
def test_bad_input_exits_with_one_clear_error_naming_file_and_line(tmp_path, cache_dir, mlm_checkpoint, ner_data):
    train = f"{ner_data}/train.conll"
    no_tag = _write(tmp_path / "no_tag.conll", "ROMEO\tB-PER\nspeaks\n")
    unseen = _write(tmp_path / "unseen.conll", "ROMEO B-PER\n\nVerona B-LOC\n")
    mixed = _write(tmp_path / "mixed.conll", "Juliet I-PER\nspeaks O\n\nROMEO O\nJuliet B-PER\n")
    cases = {
        "missing_tag": ([f"data.train_path={train}", f"data.val_path={no_tag}"],
                        [f"{no_tag}:2: expected a word and its tag in the last column"]),
        "unseen_tag": ([f"data.train_path={train}", f"data.val_path={unseen}"],
                       [f"{unseen}:3: tag 'B-LOC' never occurs in the training data"]),
        "mixed_scheme": ([f"data.train_path={mixed}", f"data.val_path={mixed}"],
                         [f"{mixed}:1: an entity starts with I- (IOB1)", f"{mixed}:5:", "mixed IOB schemes"]),
    }
    for name, (overrides, fragments) in cases.items():
        run_dir = tmp_path / f"run-{name}"
        res = run_cli("gptframe-train", "task=token_classification", f"model.init_from={mlm_checkpoint}",
                      f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", *overrides)
        assert res.returncode == 2, (name, res.stderr[-2000:])
        errors = [line for line in res.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
        for fragment in fragments:
            assert fragment in errors[0], (name, errors[0])
        assert not run_dir.exists(), f"{name} left {list(run_dir.rglob('*'))}"
