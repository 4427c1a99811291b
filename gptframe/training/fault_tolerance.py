"""Numerical faults: a non-finite loss or gradient never reaches the weights.

Before every optimizer step (after backward, before clipping and the update) `NonFiniteGuard` checks the step's
loss and gradient norm (one boolean all-reduced over the ranks, so sharded gradients are covered and every rank
decides alike); under fp16's loss scaler only the loss, since the scaler itself skips updates with inf gradients. On a fault:
- `trainer.nonfinite_policy=stop` (default): the run stops with a NonFiniteError naming the step; no checkpoint is
  written after the fault, so the newest checkpoint is the last good state (and `resume=auto` continues from it).
- `trainer.nonfinite_policy=skip`: the update is skipped (gradients dropped, so AdamW changes neither weights nor
  moments; the batch is consumed and the LR schedule moves on), up to `trainer.nonfinite_max_skips` times over the
  run; one more fault stops it as above.
Checkpoint writes also refuse non-finite weights (checkpoint_io), whatever produced them.

Test-only hook: GPTFRAME_TEST_NAN_GRAD_AT_STEPS=3,4 puts a NaN into a gradient at those optimizer steps (1-based).
"""

from __future__ import annotations

import logging
import math
import os

import lightning as L
import torch

from gptframe.errors import UserInputError
from gptframe.training.optim import loss_scaler

log = logging.getLogger("gptframe")

POLICIES = ("stop", "skip")
MIN_LOSS_SCALE = 1.0  # an fp16 loss scale below 1 means gradients overflow (or are NaN) even unscaled
INJECT_ENV = "GPTFRAME_TEST_NAN_GRAD_AT_STEPS"


class NonFiniteError(UserInputError):
    """Training produced a NaN or infinite loss or gradient (usually a learning rate or data problem)."""


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class NonFiniteGuard(L.Callback):
    def __init__(self, policy: str = "stop", max_skips: int = 0):
        if policy not in POLICIES:
            raise ValueError(f"nonfinite policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.max_skips = max_skips
        self.skipped: list[int] = []  # optimizer steps (1-based) whose update was skipped; kept in checkpoints
        self._loss_finite: torch.Tensor | None = None
        self._inject = {int(s) for s in os.environ.get(INJECT_ENV, "").split(",") if s.strip()}

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_after_backward(self, trainer, pl_module) -> None:
        step = trainer.global_step + 1
        if step in self._inject:
            param = next(p for p in pl_module.parameters() if p.grad is not None)
            _local(param.grad).view(-1)[0] = math.nan

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # fp16's loss scaler makes inf gradients on purpose (a scale too high): it skips that update and lowers the
        # scale itself, so under it only the loss is checked, and the scale (gradients that stay non-finite however
        # low the scale goes drive it towards 0, every update skipped)
        scaler = loss_scaler(trainer)
        if scaler is not None and scaler.get_scale() < MIN_LOSS_SCALE:
            raise NonFiniteError(
                f"step {trainer.global_step + 1}: the fp16 loss scale fell to {scaler.get_scale():g} (below "
                f"{MIN_LOSS_SCALE:g}): the gradients stay non-finite unscaled, so the scaler skips every update; "
                "lower task.lr, check the data, or use trainer.precision=bf16-mixed"
            )
        grads = [] if scaler is not None else [_local(p.grad) for p in pl_module.parameters() if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []  # one fused kernel per dtype/device, as clip_grad_norm_
        grad_finite = torch.isfinite(torch.stack(norms).sum()) if norms else torch.tensor(True)
        loss_finite = self._loss_finite if self._loss_finite is not None else torch.tensor(True)
        self._loss_finite = None
        local_fault = not bool(grad_finite & loss_finite.to(grad_finite.device))  # the one host sync per step
        if not trainer.strategy.reduce_boolean_decision(local_fault, all=False):
            return
        step = trainer.global_step + 1
        what = "loss" if not bool(loss_finite) else "gradient norm"
        if self.policy == "skip" and len(self.skipped) < self.max_skips:
            self.skipped.append(step)
            for p in pl_module.parameters():
                p.grad = None  # AdamW skips parameters without a gradient: no update, moments untouched
            log.warning("step %d: non-finite %s, update skipped (%d of trainer.nonfinite_max_skips=%d)",
                        step, what, len(self.skipped), self.max_skips)
            return
        if self.policy == "skip":
            allowance = f"{len(self.skipped)} step(s) skipped already, trainer.nonfinite_max_skips={self.max_skips}"
            advice = "lower task.lr or check the data"
        else:
            allowance = "trainer.nonfinite_policy=stop"
            advice = "lower task.lr, check the data, or set trainer.nonfinite_policy=skip"
        raise NonFiniteError(
            f"step {step}: the {what} is not finite (NaN or inf); training stopped before the update ({allowance}), "
            f"so the newest checkpoint is the last good state; {advice}"
        )

    def state_dict(self) -> dict:
        return {"skipped": list(self.skipped)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = list(state_dict.get("skipped", []))
