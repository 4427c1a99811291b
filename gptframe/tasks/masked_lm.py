"""Masked-LM (+ next-sentence) pretraining (BERT)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from data_pipelines.datamodule import MaskedLMDataModule
from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.mlm import MaskedLMExamples, MaskingConfig, SeqLenWarmup, SpecialIds, word_continuation_table
from data_pipelines.prepare import prepare
from gptframe.config import OptimizerSchedule
from gptframe.errors import ConfigError
from gptframe.tasks.base import TaskData, TrainingTask
from gptframe.tasks.data import describe_corpus, example_length, sized_for


@dataclass
class MaskedLMTaskConfig(OptimizerSchedule):
    """Masked-LM (+ next-sentence) pretraining (BERT) on [CLS] A [SEP] B [SEP] examples from the prepared data."""

    name: str = "mlm"
    max_seq_len: int | None = None  # None: the model's max_position_embeddings
    nsp: bool = True  # next-sentence prediction; false: RoBERTa-style full sentences, no NSP loss
    mask_prob: float = 0.15  # of non-special tokens
    mask_token_prob: float = 0.8  # of the selected tokens: [MASK]; then random_token_prob random, the rest unchanged
    random_token_prob: float = 0.1
    whole_word_masking: bool = False  # mask all pieces of a word together (WordPiece "##", SentencePiece "▁")
    short_seq_prob: float = 0.1  # as BERT: sometimes a shorter target length, so short inputs are seen too
    # sequence-length warmup: training examples start at seq_len_warmup_start tokens and grow linearly to max_seq_len
    # over the first seq_len_warmup_steps optimizer steps (0: off). Gets a small BERT off the masked-LM plateau early.
    seq_len_warmup_steps: int = 0
    seq_len_warmup_start: int = 16

    def __post_init__(self) -> None:
        self._check_name("mlm")
        self._check_optimizer()
        for key in ("mask_prob", "mask_token_prob", "random_token_prob", "short_seq_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"task.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.mask_prob == 0.0:
            raise ValueError("task.mask_prob must be > 0")
        if self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError("task.mask_token_prob + task.random_token_prob must be <= 1")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise ValueError(f"task.max_seq_len must be >= 8 or null, got {self.max_seq_len}")
        if self.seq_len_warmup_steps < 0:
            raise ValueError(f"task.seq_len_warmup_steps must be >= 0, got {self.seq_len_warmup_steps}")
        if self.seq_len_warmup_start < 8:
            raise ValueError(f"task.seq_len_warmup_start must be >= 8, got {self.seq_len_warmup_start}")


class MaskedLMTask(TrainingTask):
    name = "mlm"
    config_class = MaskedLMTaskConfig
    samples = "fill_mask"

    @classmethod
    def build_data(cls, cfg, tokenizer, model_config, labels) -> TaskData:
        t = cfg.task
        max_seq_len = example_length(t.max_seq_len, model_config)  # checks before prepare() caches anything
        if t.seq_len_warmup_steps and t.seq_len_warmup_start > max_seq_len:
            raise ConfigError(
                f"task.seq_len_warmup_start={t.seq_len_warmup_start} exceeds the example length {max_seq_len} "
                "(task.max_seq_len, or the model's max_position_embeddings)"
            )
        tokenizer, prepared = prepare(cfg.data, cfg.tokenizer, tokenizer)
        model_config = sized_for(model_config, tokenizer)
        warmup = SeqLenWarmup(t.seq_len_warmup_start, max_seq_len, t.seq_len_warmup_steps) if t.seq_len_warmup_steps else None
        special = SpecialIds.of(tokenizer)
        masking = MaskingConfig(t.mask_prob, t.mask_token_prob, t.random_token_prob, t.whole_word_masking)
        continuation = word_continuation_table(tokenizer) if t.whole_word_masking else None
        examples = {
            split: MaskedLMExamples(
                prepared.tokens(split), special, max_seq_len, masking, t.nsp, t.short_seq_prob,
                cfg.seed if split == "train" else cfg.seed + 1, continuation,
                seq_len_warmup=warmup if split == "train" else None,  # validation always at full length
            )
            for split in ("train", "val")
        }
        datamodule = MaskedLMDataModule(
            prepared, examples, cfg.data.batch_size, cfg.seed, max_seq_len, cfg.trainer.eval_batches, cfg.data.num_workers
        )
        return TaskData(tokenizer, model_config, datamodule, max_seq_len, describe_corpus(prepared), prepared=prepared,
                        summary={"data": str(prepared.directory)})

    @classmethod
    def summary_metrics(cls, final: dict[str, float]) -> dict:
        metrics = {
            "val_perplexity": math.exp(final["val/mlm_loss"]),
            "val_mlm_loss": final["val/mlm_loss"],
            "val_mlm_accuracy": final["val/mlm_accuracy"],
        }
        if "val/nsp_accuracy" in final:
            metrics["val_nsp_accuracy"] = final["val/nsp_accuracy"]
        return metrics

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
