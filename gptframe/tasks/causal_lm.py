"""Causal-LM training (any decoder): next-token prediction on blocks of the prepared token stream."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from data_pipelines.datamodule import CausalLMDataModule
from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.prepare import prepare
from gptframe.config import OptimizerSchedule
from gptframe.tasks.base import TaskData, TrainingTask
from gptframe.tasks.data import describe_corpus, example_length, sized_for


@dataclass
class CausalLMTaskConfig(OptimizerSchedule):
    """Causal-LM pretraining: next-token prediction on blocks of the prepared token stream (data.block_size long)."""

    name: str = "clm"

    def __post_init__(self) -> None:
        self._check_name("clm")
        self._check_optimizer()


class CausalLMTask(TrainingTask):
    name = "clm"
    config_class = CausalLMTaskConfig
    samples = "generations"

    @classmethod
    def build_data(cls, cfg, tokenizer, model_config, labels) -> TaskData:
        block_size = example_length(cfg.data.block_size, model_config, "data.block_size")  # before prepare() caches
        tokenizer, prepared = prepare(cfg.data, cfg.tokenizer, tokenizer)
        model_config = sized_for(model_config, tokenizer)
        datamodule = CausalLMDataModule(
            prepared, block_size=block_size, batch_size=cfg.data.batch_size, seed=cfg.seed,
            eval_batches=cfg.trainer.eval_batches, num_workers=cfg.data.num_workers,
        )
        return TaskData(tokenizer, model_config, datamodule, block_size, describe_corpus(prepared), prepared=prepared,
                        summary={"data": str(prepared.directory)})

    @classmethod
    def summary_metrics(cls, final: dict[str, float]) -> dict:
        return {"val_perplexity": math.exp(final["val/loss"])}

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
