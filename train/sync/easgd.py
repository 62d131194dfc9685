"""EASGD: elastic averaging SGD, synchronous (Zhang, Choromanska, LeCun 2015).

Each rank trains its own replica x_i; a center variable x~ (the paper's output) links them.
Every tau = --local-steps local optimizer steps, each replica and the center move toward each
other with moving rate alpha = eta * rho (eq. 5-6, with the communication period of Alg. 1):

    x_i <- x_i - alpha (x_i - x~)                         (every rank, with the old x~)
    x~  <- x~ + alpha * sum_i (x_i - x~) = x~ + p alpha (mean_i x_i - x~)

mean_i x_i comes from one all-reduce of the flat parameters, so every rank computes the same
x~ and the center never travels. BatchNorm running statistics ride in the same flat buffer and
move elastically like the parameters, so the center is a complete model. Between rounds the
replicas differ by design: evaluation and the final model are the center, identical on all ranks.

alpha defaults to 0.9 / p, the paper's choice beta = p alpha = 0.9 (sec. 6). We require
0 < alpha < 1 and p alpha <= 1: both moves are then convex combinations, so neither side
overshoots (and BatchNorm variances stay positive).
"""

from __future__ import annotations

import contextlib

import torch

from train.sync.averaging import Averager
from train.sync.base import RunShape, Sync
from train.sync.flat_buffer import FlatBuffer, floating_state
from train.sync.plsgd import broadcast_from_rank0
from utilities.distributed import CommMeter, is_distributed, world_size

DEFAULT_BETA = 0.9  # p * alpha, as the paper suggests


def elastic_round(local: torch.Tensor, center: torch.Tensor, mean: torch.Tensor, alpha: float, ranks: int) -> None:
    """Eq. (5)-(6) in place: ``local`` toward the old ``center``, then ``center`` toward ``mean`` (of the
    replicas before this round) by p * alpha."""
    local.lerp_(center, alpha)  # x_i - alpha (x_i - x~)
    center.lerp_(mean, ranks * alpha)  # x~ + p alpha (mean - x~)


class EASGD(Sync):
    OPTIONS = ("local_steps", "elastic_alpha")
    # These change what a round means; EASGD's round is always blocking, fp32 and global.
    REFUSED_OPTIONS = (
        *Sync.REFUSED_OPTIONS,
        "overlap",
        "sync_dtype",
        "hierarchy",
        "momentum_sync",
        "average_buffers",
        "fragments",
    )
    refusal_hint = "its elastic round is blocking, fp32, over all ranks, and moves BatchNorm statistics too"

    def __init__(self, meter: CommMeter, local_steps: int, elastic_alpha: float = 0.0, ranks: int = 1):
        super().__init__(meter)
        if local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, got {local_steps}")
        alpha = elastic_alpha or DEFAULT_BETA / ranks
        if not (0 < alpha < 1 and ranks * alpha <= 1):
            raise ValueError(
                f"--elastic-alpha must be in (0, 1) with alpha * ranks <= 1 (here at most "
                f"{1 / ranks:.4g}), got {elastic_alpha}; 0 picks {DEFAULT_BETA} / ranks"
            )
        self.local_steps, self.alpha, self.ranks = local_steps, alpha, ranks
        self.steps_since_sync = 0

    @classmethod
    def settings(cls, config, shape: RunShape) -> dict:
        return {**super().settings(config, shape), "ranks": world_size()}

    def prepare(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        broadcast_from_rank0(model)
        self.state = FlatBuffer(floating_state(model, include_buffers=True))
        self.center = self.state.gather().clone()  # x~ starts where every replica starts
        self.averager = Averager(self.state, self.meter) if is_distributed() else None
        return model

    def after_step(self, step: int) -> None:
        self.steps_since_sync += 1
        if self.steps_since_sync >= self.local_steps:
            self.synchronize()

    def synchronize(self) -> None:
        """One elastic round: one all-reduce gives mean_i x_i; then both moves, on every rank alike."""
        self.steps_since_sync = 0
        local = self.state.gather().clone()
        if self.averager is not None:
            self.meter.count_round()
            self.averager.average()  # leaves the mean in the live tensors; stops every rank if it is not finite
        mean = self.state.gather()
        elastic_round(local, self.center, mean, self.alpha, self.ranks)
        self.state.scatter(local)

    @contextlib.contextmanager
    def eval_model(self):
        """The center, swapped into the live model for the evaluation and swapped out after it."""
        local = self.state.gather().clone()
        self.state.scatter(self.center)
        try:
            yield self.model
        finally:
            self.state.scatter(local)

    def finish(self) -> None:
        """A last round for steps the center has not seen, then every rank holds the center."""
        if self.steps_since_sync:
            self.synchronize()
        self.state.scatter(self.center)

    def state_dict(self) -> dict:
        return {"steps_since_sync": self.steps_since_sync, "center": self.center.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.steps_since_sync = state["steps_since_sync"]
        self.center.copy_(state["center"])
