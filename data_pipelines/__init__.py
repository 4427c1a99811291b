"""Data side of gptframe: sources -> tokenizer -> packed, memory-mapped token shards -> batches.

This package never imports `gptframe`.
"""

from pathlib import Path

RESOURCES = Path(__file__).parent / "resources"
TINY_SHAKESPEARE = RESOURCES / "tinyshakespeare.txt"

__all__ = ["RESOURCES", "TINY_SHAKESPEARE"]
