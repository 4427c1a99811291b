"""Sequence classification (fine-tuning, any architecture): cross-entropy on labels; accuracy and macro-F1 over the
val set. Encoders classify from the pooled [CLS], decoders from the last real token (the architecture's model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from data_pipelines.classification import EncodedExamples, encode_examples, label_ids, label_names, read_labeled
from data_pipelines.datamodule import ClassificationDataModule
from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.errors import DataError
from gptframe.config import OptimizerSchedule
from gptframe.registry import architecture_of
from gptframe.tasks.base import TaskData, TrainingTask
from gptframe.tasks.data import context_length, require_train_val, sized_for, tokenizer_for_file


@dataclass
class ClassificationTaskConfig(OptimizerSchedule):
    """Sequence classification (fine-tuning): encoders from the pooled [CLS], decoders from the last real token."""

    name: str = "classification"
    max_seq_len: int | None = 128  # inputs are truncated to this many tokens (None: the model's context)
    classifier_dropout: float | None = None  # encoders with a dropout before the classifier: None uses the model's

    def __post_init__(self) -> None:
        self._check_name("classification")
        self._check_optimizer()
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError(f"task.max_seq_len must be >= 2 or null, got {self.max_seq_len}")


class ClassificationTask(TrainingTask):
    name = "classification"
    config_class = ClassificationTaskConfig
    monitor = ("val/accuracy", "max")
    epoch_based = True
    lm_head_flops = False

    @classmethod
    def build_data(cls, cfg, tokenizer, model_config, labels) -> TaskData:
        data = cfg.data
        require_train_val(cfg, "CSV, TSV or JSONL files")
        context = context_length(model_config)
        max_len = min(cfg.task.max_seq_len or context, context)
        pair_column = data.text_pair_column or None
        train = read_labeled(data.train_path, data.text_column, pair_column, data.label_column)
        val = read_labeled(data.val_path, data.text_column, pair_column, data.label_column)
        names = labels or label_names(train.labels)
        if len(names) < 2:
            raise DataError(f"{train.path}: a classifier needs at least 2 distinct labels, found {names}")
        if tokenizer is None:
            tokenizer = tokenizer_for_file(cfg, data.train_path)
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
        cls_sep = not architecture_of(model_config).causal
        encoded = {}
        for split, examples in (("train", train), ("val", val)):
            ids, types = encode_examples(tokenizer, examples.texts, examples.pairs, max_len, cls_sep)
            encoded[split] = EncodedExamples(ids, types, label_ids(examples, names), pad)
        datamodule = ClassificationDataModule(encoded["train"], encoded["val"], data.batch_size, cfg.seed, data.num_workers)
        description = f"{len(train.texts)} train / {len(val.texts)} val examples, {len(names)} labels: {names}"
        return TaskData(tokenizer, sized_for(model_config, tokenizer), datamodule, max_len, description, labels=names,
                        summary={"data": [data.train_path, data.val_path]})

    @classmethod
    def summary_metrics(cls, final: dict[str, float]) -> dict:
        return {"val_accuracy": final["val/accuracy"], "val_f1": final["val/f1"]}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.labels)
        self.val_loss = MeanMetric()
        self.val_accuracy = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=n, average="macro")

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"]
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        logits = self._logits(batch)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean() if self._logs_this_step() else None
        self._log_train(loss, **({"accuracy": accuracy} if accuracy is not None else {}))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        logits = self._logits(batch)  # every rank runs every batch (sharded models gather weights in forward)
        labels = batch["labels"]
        counted = labels != IGNORE_INDEX  # padding that evens out the ranks' shares counts for nothing
        if not counted.any():
            return
        logits, labels = logits[counted], labels[counted]
        self.val_loss.update(F.cross_entropy(logits.float(), labels), weight=labels.numel())
        predictions = logits.argmax(-1)
        self.val_accuracy.update(predictions, labels)
        self.val_f1.update(predictions, labels)

    def on_validation_epoch_end(self) -> None:
        metrics = {"val/loss": self.val_loss.compute(), "val/accuracy": self.val_accuracy.compute(),
                   "val/f1": self.val_f1.compute()}
        for metric in (self.val_loss, self.val_accuracy, self.val_f1):
            metric.reset()
        self.log("val/accuracy", metrics.pop("val/accuracy"), prog_bar=True)
        self.log_dict(metrics)
