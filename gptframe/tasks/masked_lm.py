"""Masked-LM (+ next-sentence) pretraining (BERT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from data_pipelines.datasets import IGNORE_INDEX
from gptframe.config import MaskedLMTaskConfig
from gptframe.tasks.base import TrainingTask


class MaskedLMTask(TrainingTask):
    name = "mlm"
    config_class = MaskedLMTaskConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # weighted means: MLM by predicted tokens, NSP by examples, synced across ranks by torchmetrics
        self.val_mlm_loss = MeanMetric()
        self.val_mlm_accuracy = MeanMetric()
        self.val_nsp_loss = MeanMetric()
        self.val_nsp_accuracy = MeanMetric()

    @property
    def has_unused_parameters(self) -> bool:
        return not self.task.nsp  # the pooler and NSP head get no gradient without next-sentence prediction

    def _forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        predicted = labels != IGNORE_INDEX
        # the MLM head only on predicted positions: a small fraction of the [B, T, V] logits a full pass costs
        logits, nsp_logits = self.model(
            batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], predict=predicted
        )
        targets = labels[predicted]
        if self.training and self.trainer.world_size > 1:
            # mean over the masked tokens of the *global* batch: ranks mask different numbers of tokens, and DDP
            # averages gradients over ranks, so each rank scales its sum by world_size / (masked tokens, all ranks)
            total = self.trainer.strategy.reduce(predicted.sum().float(), reduce_op="sum")
            mlm_loss = F.cross_entropy(logits.float(), targets, reduction="sum") * self.trainer.world_size / total
        else:
            mlm_loss = F.cross_entropy(logits.float(), targets)
        out = {
            "mlm_loss": mlm_loss,
            "mlm_accuracy": (logits.argmax(-1) == targets).float().mean(),
            "num_predicted": predicted.sum(),
        }
        if self.task.nsp:
            nsp_labels = batch["nsp_labels"]
            counted = nsp_labels != IGNORE_INDEX  # all but evaluation padding
            out["nsp_loss"] = F.cross_entropy(nsp_logits.float(), nsp_labels)
            out["nsp_accuracy"] = (nsp_logits.argmax(-1) == nsp_labels)[counted].float().mean()
            out["nsp_examples"] = counted.sum()
        out["loss"] = out["mlm_loss"] + out.get("nsp_loss", 0.0)
        return out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = self._forward(batch)
        extra = {"mlm_loss": out["mlm_loss"], "mlm_accuracy": out["mlm_accuracy"]}
        if self.task.nsp:
            extra.update(nsp_loss=out["nsp_loss"], nsp_accuracy=out["nsp_accuracy"])
        self._log_train(out["loss"], **extra)
        if self._logs_this_step():
            # the batch width, which grows under task.seq_len_warmup_steps; this rank's is enough, no sync
            self.log("train/seq_len", float(batch["input_ids"].size(1)))
        return out["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        out = self._forward(batch)  # every rank runs every batch; padding rows carry no labels and count for nothing
        n = int(out["num_predicted"])
        if n:
            self.val_mlm_loss.update(out["mlm_loss"], weight=n)
            self.val_mlm_accuracy.update(out["mlm_accuracy"], weight=n)
        if self.task.nsp and int(out["nsp_examples"]):
            size = int(out["nsp_examples"])
            self.val_nsp_loss.update(out["nsp_loss"], weight=size)
            self.val_nsp_accuracy.update(out["nsp_accuracy"], weight=size)

    def on_validation_epoch_end(self) -> None:
        mlm_loss = self.val_mlm_loss.compute()
        metrics = {"val/mlm_loss": mlm_loss, "val/mlm_accuracy": self.val_mlm_accuracy.compute(),
                   "val/perplexity": torch.exp(mlm_loss)}
        loss = mlm_loss
        if self.task.nsp:
            metrics["val/nsp_loss"] = self.val_nsp_loss.compute()
            metrics["val/nsp_accuracy"] = self.val_nsp_accuracy.compute()
            loss = loss + metrics["val/nsp_loss"]
        for metric in (self.val_mlm_loss, self.val_mlm_accuracy, self.val_nsp_loss, self.val_nsp_accuracy):
            metric.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log_dict(metrics)
