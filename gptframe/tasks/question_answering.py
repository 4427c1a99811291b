"""Extractive question answering (fine-tuning, SQuAD v1.1 / v2.0): a span head on every token, trained as
transformers' BertForQuestionAnswering (the mean of the start and end cross-entropies); validated as Hugging Face's
run_qa.py does, over every window of every val question (n-best spans, null answer for v2), scored with the official
SQuAD exact match and F1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.question_answering import QAFeatureDataset, build_qa_features, read_qa
from data_pipelines.question_answering_eval import QAEvaluation
from data_pipelines.span_datamodule import QuestionAnsweringDataModule
from gptframe.config import OptimizerSchedule
from gptframe.tasks.base import TaskData, TrainingTask
from gptframe.tasks.data import example_length, require_train_val, sized_for, tokenizer_for_texts


@dataclass
class QuestionAnsweringTaskConfig(OptimizerSchedule):
    """Extractive QA: [CLS] question [SEP] context window [SEP]; long contexts in windows overlapping by doc_stride."""

    name: str = "question_answering"
    max_seq_len: int | None = 384  # tokens per window, question included (None: the model's context)
    doc_stride: int = 128  # tokens a window shares with the previous one (run_qa's doc_stride)
    n_best_size: int = 20  # start and end candidates per window in post-processing
    max_answer_length: int = 30  # longest answer predicted, in tokens
    null_score_diff_threshold: float = 0.0  # v2: predict no answer when null score - best span score exceeds this
    version_2_with_negative: bool | None = None  # unanswerable questions (SQuAD v2); None: from the data files

    def __post_init__(self) -> None:
        self._check_name("question_answering")
        self._check_optimizer()
        if self.max_seq_len is not None and self.max_seq_len < 4:
            raise ValueError(f"task.max_seq_len must be >= 4 or null, got {self.max_seq_len}")
        if self.doc_stride < 0:
            raise ValueError(f"task.doc_stride must be >= 0, got {self.doc_stride}")
        if self.n_best_size < 1 or self.max_answer_length < 1:
            raise ValueError(f"task.n_best_size ({self.n_best_size}) and task.max_answer_length "
                             f"({self.max_answer_length}) must be >= 1")


class QuestionAnsweringTask(TrainingTask):
    name = "question_answering"
    config_class = QuestionAnsweringTaskConfig
    monitor = ("val/f1", "max")
    epoch_based = True
    lm_head_flops = False

    @classmethod
    def build_data(cls, cfg, tokenizer, model_config, labels) -> TaskData:
        data, task = cfg.data, cfg.task
        require_train_val(cfg, "SQuAD JSON, or flat JSON / JSONL records of id, question, context, answers")
        max_len = example_length(task.max_seq_len, model_config)
        train, val = read_qa(data.train_path), read_qa(data.val_path)
        if tokenizer is None:
            texts = [t for ex in train.examples for t in (ex.question, ex.context)]
            tokenizer = tokenizer_for_texts(cfg, dict.fromkeys(texts), "question_answering")
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        train_features = build_qa_features(train.examples, tokenizer, max_len, task.doc_stride)
        val_features = build_qa_features(val.examples, tokenizer, max_len, task.doc_stride)
        v2 = task.version_2_with_negative
        if v2 is None:
            v2 = train.version_2_with_negative or val.version_2_with_negative
        datamodule = QuestionAnsweringDataModule(
            QAFeatureDataset(train_features, pad), QAFeatureDataset(val_features, pad), val.examples,
            data.batch_size, cfg.seed, data.num_workers, version_2_with_negative=v2,
        )
        description = (f"{len(train)} train / {len(val)} val questions in {len(train_features)} / "
                       f"{len(val_features)} windows of {max_len} tokens, {'SQuAD v2 (with' if v2 else 'SQuAD v1 (no'} "
                       "unanswerable questions)")
        return TaskData(tokenizer, sized_for(model_config, tokenizer), datamodule, max_len, description,
                        summary={"data": [data.train_path, data.val_path], "version_2_with_negative": v2})

    @classmethod
    def summary_metrics(cls, final: dict[str, float]) -> dict:
        return {k.replace("/", "_"): v for k, v in final.items() if k.startswith("val/") and k != "val/loss"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_loss = MeanMetric()
        self.evaluation: QAEvaluation | None = None  # built from the datamodule at the first validation

    def _logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(
            input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"]
        )

    @staticmethod
    def _loss(start_logits, end_logits, batch) -> torch.Tensor:
        """transformers' BertForQuestionAnswering loss, the mean of the start and end cross-entropies, over the real
        tokens only: padding takes no probability, so the loss of a window does not depend on what it is batched
        with (the same on any number of ranks; as transformers' loss on unpadded windows)."""
        padding = batch["attention_mask"] == 0
        losses = [
            F.cross_entropy(logits.float().masked_fill(padding, torch.finfo(torch.float32).min), batch[key],
                            ignore_index=IGNORE_INDEX)
            for logits, key in ((start_logits, "start_positions"), (end_logits, "end_positions"))
        ]
        return (losses[0] + losses[1]) / 2

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(*self._logits(batch), batch)
        self._log_train(loss)
        return loss

    def _qa_evaluation(self) -> QAEvaluation:
        if self.evaluation is None:
            datamodule = self.trainer.datamodule
            self.evaluation = QAEvaluation(
                datamodule.val_examples, datamodule.val.features, datamodule.version_2_with_negative,
                self.task.n_best_size, self.task.max_answer_length, self.task.null_score_diff_threshold,
            )
        return self.evaluation

    def validation_step(self, batch, batch_idx: int) -> None:
        start_logits, end_logits = self._logits(batch)  # every rank runs every batch (sharded models gather weights)
        counted = batch["start_positions"] != IGNORE_INDEX  # padding that evens out the ranks' shares
        if counted.any():
            rows = {k: batch[k][counted] for k in ("start_positions", "end_positions", "attention_mask")}
            loss = self._loss(start_logits[counted], end_logits[counted], rows)
            self.val_loss.update(loss, weight=int(counted.sum()))
        self._qa_evaluation().add_batch(
            batch["feature_index"].cpu().numpy(), start_logits.float().cpu().numpy(), end_logits.float().cpu().numpy()
        )

    def on_validation_epoch_end(self) -> None:
        evaluation = self._qa_evaluation()
        sums = torch.tensor(evaluation.sums(), dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        evaluation.reset()
        metrics = QAEvaluation.metrics_from_sums(sums.cpu().numpy(), evaluation.version_2)
        metrics["exact_match"] = metrics.pop("exact" if evaluation.version_2 else "exact_match")  # one name for both
        self.log("val/f1", metrics.pop("f1"), prog_bar=True)
        self.log("val/loss", self.val_loss.compute())
        self.val_loss.reset()
        self.log_dict({f"val/{k}": float(v) for k, v in metrics.items()})
