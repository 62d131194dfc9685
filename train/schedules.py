"""Learning-rate scaling rules and warmup + cosine / multistep schedules.

The schedule is a pure function of the optimizer step (``lr_factor``), wrapped in
``torch.optim.lr_scheduler.LambdaLR`` so it checkpoints and resumes like any scheduler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCALING_RULES = ("none", "linear", "sqrt")


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int, rule: str) -> float:
    """Linear rule (Goyal et al. 2017, sec. 2.1): lr x global_batch / reference_batch;
    square-root rule (Krizhevsky 2014; Hoffer et al. 2017): lr x sqrt(global_batch / reference_batch)."""
    if rule not in SCALING_RULES:
        raise ValueError(f"rule must be one of {SCALING_RULES}, got {rule!r}")
    ratio = global_batch / reference_batch
    return base_lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


@dataclass(frozen=True)
class Schedule:
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start_lr: float = 0.0
    kind: str = "cosine"  # constant, cosine or multistep
    milestone_steps: tuple = ()
    gamma: float = 0.1

    def __post_init__(self):
        if self.kind not in ("constant", "cosine", "multistep"):
            raise ValueError(f"kind must be constant, cosine or multistep, got {self.kind!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {self.total_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must not be negative, got {self.warmup_steps}")

    def lr_at(self, step: int) -> float:
        """The learning rate for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:  # linear ramp (Goyal et al. 2017, sec. 2.2, gradual warmup)
            return self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * step / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        if self.kind == "multistep":
            return self.peak_lr * self.gamma ** sum(step >= m for m in self.milestone_steps)
        # Cosine annealing to zero over the steps after warmup (Loshchilov & Hutter 2017, no restarts).
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return 0.5 * self.peak_lr * (1 + math.cos(math.pi * progress))

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR whose factor times ``peak_lr`` (set as the optimizer's base LR) is ``lr_at``."""
        for group in optimizer.param_groups:
            group["lr"] = self.peak_lr
            group.pop("initial_lr", None)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_at(step) / self.peak_lr)


def default_warmup_start(base_lr: float, peak_lr: float) -> float:
    """Goyal et al. warm up from the unscaled LR to the larger scaled one; otherwise (no scaling, or a
    scaled LR below the base) warmup starts at a tenth of the peak, so it always rises."""
    return base_lr if peak_lr > base_lr else peak_lr / 10
