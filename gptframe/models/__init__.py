"""Plain-PyTorch models. Each file reads alone; nothing here imports Lightning or torch.distributed."""

from gptframe.models.bert import BertConfig, BertForPreTraining, BertModel
from gptframe.models.gpt import GPT, GPTConfig, KVCache

__all__ = ["GPT", "BertConfig", "BertForPreTraining", "BertModel", "GPTConfig", "KVCache"]
