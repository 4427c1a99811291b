"""Token classification (named entities, chunks; fine-tuning): a label per word on its first sub-token (run_ner.py),
cross-entropy ignoring the rest; entity precision / recall / F1 exactly as seqeval computes them, plus token accuracy,
from per-type counts summed over ranks."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from data_pipelines.datamodule import ClassificationDataModule
from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.errors import DataError
from data_pipelines.token_classification import (
    SCHEMES,
    TaggedSentences,
    TokenClassificationExamples,
    detect_scheme,
    read_tagged,
    tag_names,
)
from data_pipelines.token_classification_eval import (
    EntityCounts,
    count_entities,
    entity_scores,
    entity_types,
    tags_of_labeled_tokens,
)
from gptframe.config import OptimizerSchedule
from gptframe.errors import ConfigError
from gptframe.tasks.base import TaskData, TrainingTask
from gptframe.tasks.data import context_length, require_train_val, sized_for, tokenizer_for_file

MODES = ("default", "strict")


@dataclass
class TokenClassificationTaskConfig(OptimizerSchedule):
    """Token classification (fine-tuning): CoNLL-style or JSONL tagged sentences, seqeval entity metrics."""

    name: str = "token_classification"
    max_seq_len: int | None = 128  # tokens per sentence, [CLS]/[SEP] included; later words are cut (None: the context)
    label_all_subtokens: bool = False  # label every sub-token of a word (B-X -> I-X), not only the first
    mode: str = "default"  # seqeval's mode: default (conlleval-like) or strict (well-formed entities under `scheme`)
    scheme: str | None = None  # IOB1, IOB2 or IOBES: strict mode needs it, and it must be the data's (checked)

    def __post_init__(self) -> None:
        self._check_name("token_classification")
        self._check_optimizer()
        if self.max_seq_len is not None and self.max_seq_len < 3:
            raise ValueError(f"task.max_seq_len must be >= 3 or null, got {self.max_seq_len}")
        if self.mode not in MODES:
            raise ValueError(f"task.mode must be one of {MODES}, got {self.mode!r}")
        if self.scheme is not None and self.scheme not in SCHEMES:
            raise ValueError(f"task.scheme must be one of {SCHEMES} or null (detected), got {self.scheme!r}")


class TokenClassificationTask(TrainingTask):
    name = "token_classification"
    config_class = TokenClassificationTaskConfig
    monitor = ("val/f1", "max")
    epoch_based = True
    lm_head_flops = False

    @classmethod
    def build_data(cls, cfg, tokenizer, model_config, labels) -> TaskData:
        data, task = cfg.data, cfg.task
        require_train_val(cfg, "CoNLL-style or JSONL tagged sentences")
        context = context_length(model_config)
        max_len = min(task.max_seq_len or context, context)  # the default 128 on a shorter model: its context
        train = read_tagged(data.train_path, labels)
        val = read_tagged(data.val_path, tag_names(train))  # integer tags index the sorted training tags
        scheme = detect_scheme(_joined(train, val))  # one scheme across both files, or an error naming two lines
        if task.mode == "strict" and task.scheme != scheme:
            raise ConfigError(f"task.mode=strict reads entities under task.scheme={task.scheme}, but the data is "
                              f"{scheme}: set task.scheme={scheme}")
        names = labels or tag_names(train)
        if len(names) < 2:
            raise DataError(f"{train.path}: a tagger needs at least 2 distinct tags, found {names}")
        if tokenizer is None:
            tokenizer = tokenizer_for_file(cfg, str(_sentences_text(cfg, train)))
        if tokenizer.cls_id is None or tokenizer.sep_id is None:
            raise ConfigError(f"task=token_classification needs a tokenizer with [CLS] and [SEP] tokens (an encoder's "
                              f"WordPiece); this {tokenizer.kind} tokenizer has none")
        sets = {split: TokenClassificationExamples.build(tokenizer, sentences, names, max_len, task.label_all_subtokens)
                for split, sentences in (("train", train), ("val", val))}
        datamodule = ClassificationDataModule(sets["train"], sets["val"], data.batch_size, cfg.seed, data.num_workers)
        description = (f"{len(train)} train / {len(val)} val sentences, {scheme} tags, {len(names)} labels: {names}")
        return TaskData(tokenizer, sized_for(model_config, tokenizer), datamodule, max_len, description, labels=names,
                        summary={"data": [data.train_path, data.val_path], "scheme": scheme})

    @classmethod
    def summary_metrics(cls, final: dict[str, float]) -> dict:
        return {"val_f1": final["val/f1"], "val_precision": final["val/precision"], "val_recall": final["val/recall"],
                "val_accuracy": final["val/accuracy"]}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_loss = MeanMetric()
        self.types = entity_types(self.labels)
        self.counts = EntityCounts.zeros(self.types)

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"]
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        logits, labels = self._logits(batch).flatten(0, 1).float(), batch["labels"].flatten()
        if self.trainer.world_size > 1:
            # the mean over the labeled tokens of the *global* batch (as masked_lm): ranks hold different numbers of
            # them and DDP averages gradients, so each rank scales its sum by world_size / (labeled tokens, all ranks)
            total = self.trainer.strategy.reduce((labels != IGNORE_INDEX).sum().float(), reduce_op="sum")
            loss = F.cross_entropy(logits, labels, reduction="sum") * self.trainer.world_size / total
        else:
            loss = F.cross_entropy(logits, labels)  # ignore_index is IGNORE_INDEX (-100)
        self._log_train(loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        logits = self._logits(batch)  # every rank runs every batch (sharded models gather weights in forward)
        labels = batch["labels"]
        counted = labels != IGNORE_INDEX  # padding rows (uneven rank shares) and non-first sub-tokens count nothing
        if not counted.any():
            return
        self.val_loss.update(F.cross_entropy(logits[counted].float(), labels[counted]), weight=int(counted.sum()))
        rows = counted.any(dim=1)
        gold, predicted = tags_of_labeled_tokens(logits[rows].argmax(-1).cpu().numpy(), labels[rows].cpu().numpy(),
                                                 self.labels)
        self.counts += count_entities(gold, predicted, self.types, self.task.mode, self.task.scheme)

    def on_validation_epoch_end(self) -> None:
        # entity counts of this rank's sentences; summed over ranks they are the whole val set's
        local = torch.tensor(self.counts.as_array(), dtype=torch.float64, device=self.device)
        total = self.trainer.strategy.reduce(local, reduce_op="sum") if self.trainer.world_size > 1 else local
        scores = entity_scores(EntityCounts.from_array(self.types, total.round().long().cpu().numpy()))
        self.counts = EntityCounts.zeros(self.types)
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/f1", scores["f1"], prog_bar=True)
        self.log_dict({"val/loss": loss, "val/precision": scores["precision"], "val/recall": scores["recall"],
                       "val/accuracy": scores["accuracy"]})


def _joined(train: TaggedSentences, val: TaggedSentences) -> TaggedSentences:
    return TaggedSentences(train.path, train.words + val.words, train.tags + val.tags, train.where + val.where)


def _sentences_text(cfg, sentences: TaggedSentences) -> Path:
    """The training sentences as plain text (words joined by spaces, a sentence a line) for a tokenizer trained from
    scratch, in the data cache under their content hash."""
    text = "\n".join(" ".join(words) for words in sentences.words) + "\n"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = Path(os.path.expanduser(cfg.data.cache_dir)).resolve() / "token_classification" / f"{digest}.txt"
    if not path.is_file():  # written under a temporary name and renamed: concurrent ranks never read half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


__all__ = ["TokenClassificationTask", "TokenClassificationTaskConfig"]
