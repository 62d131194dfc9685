"""--on-nan: whether a step's update is taken when a value is not finite, decided alike on every rank.

Where the gradients were averaged (MBSGD, PostLocalSGD's first phase) every rank decides on them: a NaN
on one rank reached all. Otherwise each rank decides on its own loss; under ``stop`` a rank that must
stop poisons its model (NaN), so the next averaging round stops every rank at the same step
(train.sync.averaging checks the average), and the epoch's metrics reduction is the latest meeting point.
Under ``skip`` a skipped step leaves no trace, BatchNorm statistics included.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from train.sync.base import Sync, TrainingDiverged
from utilities.distributed import world_size


class NonFiniteGuard:
    def __init__(self, model: torch.nn.Module, sync: Sync, on_nan: str, scales_gradients: bool):
        self.model, self.sync, self.on_nan = model, sync, on_nan
        # fp16 gradients are scaled and may overflow: the GradScaler skips those steps itself.
        self.scales_gradients = scales_gradients
        self.reason: Optional[str] = None  # why this rank must stop, until every rank knows
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.restorable = buffers if on_nan == "skip" else []

    def snapshot(self) -> list:
        """What a skipped step must put back: the BatchNorm statistics its forward passes updated."""
        return [b.clone() for b in self.restorable]

    def undo(self, snapshot: list) -> None:
        if snapshot:
            torch._foreach_copy_(self.restorable, snapshot)

    def update_is_finite(self, loss_sum: torch.Tensor, step: int, lr: float) -> bool:
        shared = self.sync.gradients_shared(step) and not self.scales_gradients
        if shared:
            gradients = [p.grad for p in self.model.parameters() if p.grad is not None]
            finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(gradients)).sum()))
        else:
            finite = bool(torch.isfinite(loss_sum))
        if finite or self.on_nan != "stop":
            return finite
        reason = (
            f"loss is not finite at step {step} (lr {lr:.4g}); lower --lr, add --warmup-epochs, or pass --on-nan skip"
        )
        if shared or world_size() == 1:
            raise TrainingDiverged(reason)
        if self.reason is None:
            self.reason = reason
            with torch.no_grad():
                for parameter in self.model.parameters():
                    parameter.fill_(math.nan)
        return False

    def check_epoch(self, stopped_ranks: float) -> None:
        """After the epoch's metrics reduction, which counted the ranks that must stop: before any
        evaluation or checkpoint of a poisoned model."""
        if stopped_ranks:
            raise TrainingDiverged(
                self.reason
                or f"{stopped_ranks:.0f} other rank(s) stopped: their loss is not finite; lower --lr, add "
                f"--warmup-epochs, or pass --on-nan skip"
            )
