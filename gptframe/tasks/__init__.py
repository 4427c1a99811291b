"""LightningModules: one per training objective, each wrapping a plain model."""

from gptframe.tasks.causal_lm import CausalLMTask

__all__ = ["CausalLMTask"]
