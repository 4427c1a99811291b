"""Plain-PyTorch models. Each file reads alone; nothing here imports Lightning or torch.distributed."""

from gptframe.models.gpt import GPT, GPTConfig, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache"]
