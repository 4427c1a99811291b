"""Callbacks: metric history (for summary.json and the loss curve), a step-based progress bar.

Throughput and MFU: gptframe.training.throughput.ThroughputMonitor."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn


class MetricsHistory(L.Callback):
    """Train and val loss by step, kept in the checkpoint so a resumed run's curve and summary are complete."""

    def __init__(self, log_every_n_steps: int):
        self.log_every_n_steps = log_every_n_steps
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step_done = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if step_done and trainer.global_step % self.log_every_n_steps == 0:
            loss = trainer.callback_metrics.get("train/loss")
            if loss is not None:
                self.train.append((trainer.global_step, float(loss)))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            loss = trainer.callback_metrics.get("val/loss")
            if loss is not None:
                self.val.append((trainer.global_step, float(loss)))

    def state_dict(self) -> dict:
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train = [tuple(x) for x in state_dict["train"]]
        self.val = [tuple(x) for x in state_dict["val"]]

    def plot(self, path: Path, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for points, label, style in ((self.train, "train loss", {"linewidth": 1, "alpha": 0.8}),
                                     (self.val, "val loss", {"marker": "o", "linewidth": 2})):
            if points:
                ax.plot([s for s, _ in points], [loss for _, loss in points], label=label, **style)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


class StepProgressBar(TQDMProgressBar):
    """Counts optimizer steps towards max_steps (the stock bar counts batches of an endless epoch)."""

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train")

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.disable = True  # evaluations are short; their bars would only clutter logs
        return bar

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = trainer.global_step
        bar = self.train_progress_bar
        if bar is not None and self._should_update(n, bar.total):
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
