"""Generation and transformers-style pipelines."""

from gptframe.inference.generate import generate_tokens
from gptframe.inference.pipelines import pipeline

__all__ = ["generate_tokens", "pipeline"]
