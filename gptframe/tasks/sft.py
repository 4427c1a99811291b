"""Supervised fine-tuning of decoders on instructions or conversations (task=sft): the loss is on the assistant's
tokens only, averaged per token over the global batch (the optimizer step's micro-batches on every rank), so gradient
accumulation and DDP / FSDP give the gradient of one big batch. The data side (reading, chat template, loss mask,
length rule, packing, resumable sampling) is `data_pipelines.sft`; the model is the architecture's causal LM.

The tokenizer comes from model.init_from (or the resumed checkpoint); one without a chat template gets gptframe's
ChatML default and its two special tokens, and the model's embedding grows by those rows (`transfer_weights` keeps
the pretrained rows and starts the new ones at their mean).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.sft import (
    OVERFLOW_RULES,
    SFTColumns,
    SFTDataModule,
    build_sft_data,
    document_causal_mask,
    read_conversations,
)
from data_pipelines.tokenizers.chat import with_chat_template
from gptframe.config import OptimizerSchedule
from gptframe.errors import ConfigError
from gptframe.tasks.base import TaskData, TrainingTask
from gptframe.tasks.data import example_length, require_train_val, sized_for

log = logging.getLogger("gptframe")


@dataclass
class SFTTaskConfig(OptimizerSchedule):
    """Instruction / chat fine-tuning of a decoder: data.train_path and data.val_path are .json or .jsonl files of
    chat records (`messages`) or Alpaca-style records (instruction / input / output)."""

    name: str = "sft"
    max_seq_len: int | None = None  # tokens per example (inputs), None: the model's context
    overflow: str = "truncate"  # longer examples: "truncate" (prompt first, then what fits of the response) | "drop"
    packing: bool = False  # pack short examples into full rows; a block-diagonal mask keeps them apart
    messages_column: str = "messages"  # chat records
    instruction_column: str = "instruction"  # Alpaca-style records
    input_column: str = "input"
    output_column: str = "output"
    system_column: str | None = None  # an optional system prompt column of instruction records
    sample_prompts: int = 3  # val prompts answered in the log at each validation (0: none)
    sample_max_new_tokens: int = 48

    def __post_init__(self) -> None:
        self._check_name("sft")
        self._check_optimizer()
        if self.overflow not in OVERFLOW_RULES:
            raise ValueError(f"task.overflow must be one of {list(OVERFLOW_RULES)}, got {self.overflow!r}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError(f"task.max_seq_len must be >= 2 or null, got {self.max_seq_len}")
        if self.sample_prompts < 0 or self.sample_max_new_tokens < 1:
            raise ValueError("task.sample_prompts must be >= 0 and task.sample_max_new_tokens >= 1")

    @property
    def columns(self) -> SFTColumns:
        return SFTColumns(self.messages_column, self.instruction_column, self.input_column, self.output_column,
                          self.system_column)


def chat_model_config(model_config, tokenizer):
    """The model config sized for a tokenizer that may have grown (chat tokens): a vocabulary too small for it is
    re-derived from the tokenizer (padded as the config asks); one with room enough is kept."""
    if model_config.vocab_size is not None and model_config.vocab_size < tokenizer.vocab_size:
        model_config = dataclasses.replace(model_config, vocab_size=None)
    return sized_for(model_config, tokenizer)


class SFTTask(TrainingTask):
    name = "sft"
    model_task = "clm"  # the model is the architecture's causal LM: it loads, generates and exports as one
    config_class = SFTTaskConfig
    epoch_based = True
    samples = "chat"

    @classmethod
    def check_architecture(cls, spec) -> None:
        if not spec.causal:
            raise ValueError(f"task=sft fine-tunes decoders; {spec.name.upper()} is an encoder (use a decoder model)")
        super().check_architecture(spec)

    @classmethod
    def build_data(cls, cfg, tokenizer, model_config, labels) -> TaskData:
        data, task = cfg.data, cfg.task
        require_train_val(cfg, ".json or .jsonl chat or instruction files")
        if tokenizer is None:
            raise ConfigError("task=sft fine-tunes a pretrained decoder: set model.init_from=CHECKPOINT_OR_HF_DIR")
        tokenizer = with_chat_template(tokenizer)
        model_config = chat_model_config(model_config, tokenizer)
        block_size = example_length(task.max_seq_len, model_config)
        splits = {
            split: build_sft_data(path, tokenizer, block_size, columns=task.columns, overflow=task.overflow,
                                  packing=task.packing, seed=cfg.seed)
            for split, path in (("train", data.train_path), ("val", data.val_path))
        }
        prompts = [c.messages[:-1] for c in read_conversations(data.val_path, task.columns)[: task.sample_prompts]]
        # the prompts are what the logs and the W&B samples table ask the model at each validation
        datamodule = SFTDataModule(splits["train"].rows, splits["val"].rows, data.batch_size, cfg.seed,
                                   data.num_workers, sample_conversations=prompts)
        stats = {split: s.stats.as_dict() for split, s in splits.items()}
        for split, s in stats.items():
            log.info("sft %s: %d examples, %d kept, %d truncated, %d dropped (longer than %d tokens), %d response "
                     "tokens", split, s["examples"], s["kept"], s["truncated"], s["dropped_too_long"], block_size,
                     s["loss_tokens"])
        description = (f"{stats['train']['kept']} train / {stats['val']['kept']} val examples in "
                       f"{len(splits['train'].rows)} / {len(splits['val'].rows)} rows"
                       f"{' (packed)' if task.packing else ''}, {task.overflow} at {block_size} tokens")
        return TaskData(tokenizer, model_config, datamodule, block_size, description,
                        summary={"data": [data.train_path, data.val_path], "sft_examples": stats})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_loss = MeanMetric()

    def _token_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy over the batch's response tokens."""
        mask = document_causal_mask(batch["document_ids"]) if self.task.packing else None
        logits = self.model(batch["input_ids"], position_ids=batch["position_ids"], attn_mask=mask)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        total = self._token_losses(batch)
        # Lightning divides by accumulate and DDP / FSDP average over ranks: scaling back makes the step's gradient
        # that of sum(response-token losses) / response tokens of the whole step (SFTBatchSampler)
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches
        loss = total * scale / batch["step_loss_tokens"].clamp(min=1)
        self._log_train(total / batch["num_loss_tokens"].clamp(min=1))  # this micro-batch's per-token loss
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        counted = int(batch["num_loss_tokens"])  # every rank runs every batch; padding rows count for nothing
        total = self._token_losses(batch)
        if counted:
            self.val_loss.update(total / counted, weight=counted)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # per response token over the whole split, synced across ranks
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/perplexity", torch.exp(loss))

    def on_validation_end(self) -> None:
        """A few val prompts answered in the log (greedy), to watch what fine-tuning does."""
        trainer = self.trainer
        if trainer.sanity_checking or not trainer.is_global_zero or not self.task.sample_prompts:
            return
        from gptframe.training.loggers import chat_samples

        rows = chat_samples(self, trainer.datamodule, self.task.sample_max_new_tokens)
        for prompt, answer in rows:
            log.info("sample (step %d)\n  prompt: %s\n  answer: %s", trainer.global_step, prompt, answer)
