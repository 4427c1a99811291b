"""Task units: each module here defines a TrainingTask (LightningModule) with its config schema, data builder,
metrics and summary fields. `TASKS` maps `task.name` to the unit, found by importing every module in this package."""

import importlib
import inspect
import pkgutil

from gptframe.tasks.base import TaskData, TrainingTask


def _discover() -> dict[str, type[TrainingTask]]:
    found: dict[str, type[TrainingTask]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, TrainingTask) and obj is not TrainingTask and obj.__module__ == module.__name__:
                found[obj.name] = obj
    return dict(sorted(found.items()))


TASKS: dict[str, type[TrainingTask]] = _discover()

__all__ = ["TASKS", "TaskData", "TrainingTask"]
