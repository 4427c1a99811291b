"""Causal-LM training (GPT): next-token prediction on blocks of the token stream."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from data_pipelines.datasets import IGNORE_INDEX
from gptframe.config import CausalLMTaskConfig
from gptframe.tasks.base import TrainingTask


class CausalLMTask(TrainingTask):
    name = "clm"
    config_class = CausalLMTaskConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_loss = MeanMetric()

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self._log_train(loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self._loss(batch)  # every rank runs every batch (sharded models gather weights in forward)
        counted = int((batch[1] != IGNORE_INDEX).sum())  # padding that evens out the ranks' shares counts for nothing
        if counted:
            self.val_loss.update(loss, weight=counted)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # synced across ranks by torchmetrics, weighted by tokens
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/perplexity", torch.exp(loss))
