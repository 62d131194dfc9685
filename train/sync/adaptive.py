"""AdaptiveJ: local SGD whose number of local steps J follows the validation loss.

Two rules (``--adaptive-rule``):
- ``threshold``: after each evaluation, the relative change of the validation loss
  r = (previous - current) / previous. If the loss rose (r < 0; an oscillating loss rises
  every other evaluation) J is halved; if it has settled (r below the threshold of the
  current phase of training: early, middle, late thirds) J is doubled; otherwise kept.
- ``trend``: halve J when the loss rose in each of the last two evaluations, double it
  when it fell in each.
J stays within [min_local_steps, max_local_steps]. Rank 0 decides from the rank-reduced
loss and broadcasts the decision, so every rank always uses the same J.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from train.sync.base import RunShape
from train.sync.plsgd import PLSGD
from utilities.distributed import CommMeter, is_distributed

RULES = ("threshold", "trend")


class LocalStepsController:
    """Decides J from a sequence of validation losses; pure, so it is tested on scripted sequences."""

    def __init__(
        self,
        initial: int,
        minimum: int,
        maximum: int,
        rule: str = "threshold",
        thresholds=(0.02, 0.005, 0.001),
        total_epochs: int = 1,
    ):
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got minimum={minimum}, maximum={maximum}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must be three values (early, middle, late), got {thresholds}")
        self.local_steps = min(max(initial, minimum), maximum)
        self.minimum, self.maximum, self.rule = minimum, maximum, rule
        self.thresholds, self.total_epochs = tuple(thresholds), max(1, total_epochs)
        self.losses = []

    def threshold_for(self, epoch: int) -> float:
        phase = min(2, 3 * epoch // self.total_epochs)
        return self.thresholds[phase]

    def update(self, epoch: int, val_loss: float) -> int:
        """Record the loss of ``epoch`` (0-based) and return the J to use next."""
        self.losses.append(float(val_loss))
        decision = self.decide(epoch)
        if decision == "double":
            self.local_steps = min(self.maximum, self.local_steps * 2)
        elif decision == "halve":
            self.local_steps = max(self.minimum, self.local_steps // 2)
        return self.local_steps

    def decide(self, epoch: int) -> str:
        if self.rule == "trend":
            if len(self.losses) < 3:
                return "keep"
            a, b, c = self.losses[-3:]
            return "halve" if a < b < c else "double" if a > b > c else "keep"
        if len(self.losses) < 2:
            return "keep"
        previous, current = self.losses[-2:]
        if current > previous:
            return "halve"
        relative_change = (previous - current) / max(abs(previous), 1e-12)
        return "double" if relative_change < self.threshold_for(epoch) else "keep"

    def state_dict(self) -> dict:
        return {"local_steps": self.local_steps, "losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.local_steps, self.losses = state["local_steps"], list(state["losses"])


_CONTROLLER_OPTIONS = ("local_steps", "min_local_steps", "max_local_steps", "adaptive_rule", "adaptive_thresholds")


class AdaptiveJ(PLSGD):
    OPTIONS = (*PLSGD.OPTIONS, *_CONTROLLER_OPTIONS[1:])

    def __init__(
        self,
        meter: CommMeter,
        controller: LocalStepsController,
        average_buffers: bool = True,
        momentum_sync: str = "local",
        **averaging,
    ):
        super().__init__(meter, controller.local_steps, average_buffers, momentum_sync, **averaging)
        self.controller = controller

    @classmethod
    def settings(cls, config, shape: RunShape) -> dict:
        settings = super().settings(config, shape)
        controller = LocalStepsController(*[settings.pop(name) for name in _CONTROLLER_OPTIONS], shape.epochs)
        return {**settings, "controller": controller}

    def after_epoch(self, epoch: int, metrics: dict) -> dict:
        figures = super().after_epoch(epoch, metrics)
        if metrics.get("val_loss") is not None:
            decided = self.controller.update(epoch, metrics["val_loss"])
            self.local_steps = self.broadcast_decision(decided)
            self.controller.local_steps = self.local_steps
        return {**figures, "local_steps": self.local_steps}

    def broadcast_decision(self, local_steps: int) -> int:
        if not is_distributed():
            return local_steps
        decision = torch.tensor([local_steps], dtype=torch.int64, device=self.state.flat.device)
        dist.broadcast(decision, src=0)
        return int(decision.item())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.controller.load_state_dict(state["controller"])
