"""Sequence classification (fine-tuning): cross-entropy on labels; accuracy and macro-F1 over the val set."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from data_pipelines.datasets import IGNORE_INDEX
from gptframe.config import ClassificationTaskConfig
from gptframe.tasks.base import TrainingTask


class ClassificationTask(TrainingTask):
    name = "classification"
    config_class = ClassificationTaskConfig
    monitor = ("val/accuracy", "max")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.labels)
        self.val_loss = MeanMetric()
        self.val_accuracy = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=n, average="macro")

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.model_config.arch == "bert":
            return self.model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        return self.model(batch["input_ids"], batch["attention_mask"])

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
