"""Training tasks: LightningModules wrapping a plain model, one per `conf/task/` option."""

from gptframe.tasks.base import TrainingTask
from gptframe.tasks.causal_lm import CausalLMTask
from gptframe.tasks.classification import ClassificationTask
from gptframe.tasks.masked_lm import MaskedLMTask

TASKS: dict[str, type[TrainingTask]] = {t.name: t for t in (CausalLMTask, MaskedLMTask, ClassificationTask)}

__all__ = ["TASKS", "CausalLMTask", "ClassificationTask", "MaskedLMTask", "TrainingTask"]
