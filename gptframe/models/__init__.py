"""Plain-PyTorch models. Each file reads alone; nothing here imports Lightning or torch.distributed."""

from gptframe.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel
from gptframe.models.gpt import GPT, GPTConfig, GPTForSequenceClassification, KVCache

__all__ = [
    "GPT",
    "BertConfig",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertModel",
    "GPTConfig",
    "GPTForSequenceClassification",
    "KVCache",
]
