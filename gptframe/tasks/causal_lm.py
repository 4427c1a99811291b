"""Causal-LM training (any decoder): next-token prediction on blocks of the prepared token stream."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data_pipelines.datamodule import CausalLMDataModule
from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.prepare import prepare_sources
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
        tokenizer, sources = prepare_sources(cfg.data, cfg.tokenizer, tokenizer)
        prepared = sources[0].data  # a mixture's first source: what the log line and the summary's "data" name
        model_config = sized_for(model_config, tokenizer)
        datamodule = CausalLMDataModule(
            sources, block_size=block_size, batch_size=cfg.data.batch_size, seed=cfg.seed,
            eval_batches=cfg.trainer.eval_batches, num_workers=cfg.data.num_workers,
        )
        return TaskData(tokenizer, model_config, datamodule, block_size, describe_corpus(prepared), prepared=prepared,
                        summary={"data": str(prepared.directory)})

    @classmethod
    def summary_metrics(cls, final: dict[str, float]) -> dict:
        per_source = {k.replace("/", "_"): v for k, v in final.items() if k.startswith("val/loss_")}  # mixtures
        return {"val_perplexity": math.exp(final["val/loss"]), **per_source}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        self._log_train(loss)
        return loss

    def on_validation_epoch_start(self) -> None:
        # per source (validation batches carry their source's index): summed token losses and token counts
        names = getattr(self.trainer.datamodule, "source_names", None) or ["data"]
        self._val_sums = torch.zeros(2, len(names), dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]  # every rank runs every batch (sharded models gather weights in forward)
        source = batch[2] if len(batch) > 2 else torch.zeros(len(x), dtype=torch.long, device=x.device)
        logits = self.model(x)
        # padding rows (IGNORE_INDEX labels, evening out the ranks' shares) add nothing to the sums
        token_loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1), reduction="none")
        self._val_sums[0].index_add_(0, source, token_loss.view(y.shape).sum(1).double())
        self._val_sums[1].index_add_(0, source, (y != IGNORE_INDEX).sum(1).double())

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")  # over ranks
        per_source = sums[0] / sums[1].clamp(min=1)
        datamodule = self.trainer.datamodule
        names = getattr(datamodule, "source_names", None) or ["data"]
        weights = torch.tensor(getattr(datamodule, "source_weights", None) or [1.0], dtype=torch.float64,
                               device=per_source.device)
        # a mixture's val loss: the per-source losses weighted as training draws them; one source: its loss
        loss = (per_source * weights).sum() / weights.sum()
        self.log("val/loss", loss.float(), prog_bar=True)
        self.log("val/perplexity", torch.exp(loss).float())
        if len(names) > 1:
            for name, value in zip(names, per_source, strict=True):
                self.log(f"val/loss_{name}", value.float())
