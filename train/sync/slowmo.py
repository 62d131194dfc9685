"""SlowMo and DiLoCo: local SGD whose averaging round ends with an outer optimizer step.

``OuterStepSGD`` is local SGD (PLSGD) plus an outer optimizer passed in, as torchft's DiLoCo:
the outer optimizer holds a copy x_start of the parameters at the start of the local period;
after the ranks average to x_avg it steps on the pseudo-gradient d = x_start - x_avg, and every
rank continues from its result. The two methods differ only in that optimizer.

SlowMo (Wang, Tantia, Ballas, Rabbat 2020, Algorithm 1): with gamma the inner LR,
    u = beta * u + d / gamma,    x = x_start - alpha * gamma * u.
With alpha = 1 and beta = 0 this is exactly local SGD.

DiLoCo (Douillard et al. 2023, Algorithm 1): SGD with Nesterov momentum (outer lr 0.7,
momentum 0.9) on d, and AdamW as the default inner optimizer.
"""

from __future__ import annotations

from typing import Callable

import torch

from train.sync.plsgd import PLSGD
from utilities.distributed import CommMeter

OuterOptimizerFactory = Callable[[list], torch.optim.Optimizer]


def fragment_views(tensors: list, fragment) -> list:
    """``tensors`` (one per parameter), or with a streamed fragment only the parameter elements in it."""
    if fragment is None:
        return tensors
    return [tensors[i].view(-1)[start:stop] for i, start, stop in fragment.pieces if i < len(tensors)]


class OuterStepSGD(PLSGD):
    def __init__(
        self,
        meter: CommMeter,
        local_steps: int,
        outer_optimizer: OuterOptimizerFactory,
        average_buffers: bool = True,
        momentum_sync: str = "local",
        **averaging,
    ):
        super().__init__(meter, local_steps, average_buffers, momentum_sync, **averaging)
        self.make_outer_optimizer = outer_optimizer

    def prepare(self, model, optimizer):
        model = super().prepare(model, optimizer)
        self.parameters = [p.data for p in model.parameters()]
        self.start = [torch.nn.Parameter(p.clone(), requires_grad=False) for p in self.parameters]  # x_start
        self.outer_optimizer = self.make_outer_optimizer(self.start)
        # Streamed fragments: one outer optimizer per fragment, over views of the period-start copy.
        self.fragment_optimizers = [
            self.make_outer_optimizer(
                [torch.nn.Parameter(view, requires_grad=False) for view in fragment_views(self.start, fragment)]
            )
            for fragment in (self.streamer.fragments if self.streamer is not None else [])
        ]
        return model

    def after_average(self, fragment=None) -> None:
        self.outer_step(fragment)
        super().after_average(fragment)

    def outer_step(self, fragment=None) -> None:
        """The outer optimizer's step on the pseudo-gradient of the whole state or of one streamed fragment."""
        optimizer = self.outer_optimizer if fragment is None else self.fragment_optimizers[fragment.index]
        starts = [p for group in optimizer.param_groups for p in group["params"]]
        with torch.no_grad():
            for x, start in zip(fragment_views(self.parameters, fragment), starts):
                start.grad = start - x  # pseudo-gradient: x_start - x_avg
            optimizer.step()
            for x, start in zip(fragment_views(self.parameters, fragment), starts):
                x.copy_(start)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "start": [p.data for p in self.start],
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "fragment_optimizers": [optimizer.state_dict() for optimizer in self.fragment_optimizers],
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            for mine, saved in zip(self.start, state["start"]):
                mine.copy_(saved)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        for optimizer, saved in zip(self.fragment_optimizers, state.get("fragment_optimizers", [])):
            optimizer.load_state_dict(saved)


class SlowMomentum(torch.optim.Optimizer):
    """SlowMo's outer step on the pseudo-gradient d, with gamma the inner LR of this round.

    Mathematically torch.optim.SGD(momentum=beta, lr=alpha*gamma) on d/gamma, but not bit for bit:
    SGD rounds d/gamma before adding it to u (here u + d*(1/gamma) is one fused step), fuses
    x - lr*u where this rounds alpha*gamma*u first, and starts its buffer as d/gamma unscaled by
    beta only on the first step; written out so that runs keep their exact numbers."""

    def __init__(self, params, inner_lr: Callable[[], float], slow_momentum: float, slow_lr: float):
        super().__init__(params, {"slow_momentum": slow_momentum, "slow_lr": slow_lr})
        self.inner_lr = inner_lr

    @torch.no_grad()
    def step(self, closure=None):
        lr_inner = self.inner_lr()
        for group in self.param_groups:
            for x in group["params"]:
                state = self.state[x]
                if "slow_momentum_buffer" not in state:
                    state["slow_momentum_buffer"] = torch.zeros_like(x)
                u = state["slow_momentum_buffer"]
                u.mul_(group["slow_momentum"]).add_(x.grad, alpha=1 / lr_inner)
                x.copy_(x - group["slow_lr"] * lr_inner * u)


class SlowMo(OuterStepSGD):
    OPTIONS = (*PLSGD.OPTIONS, "slow_momentum", "slow_lr")

    def __init__(
        self,
        meter: CommMeter,
        local_steps: int,
        slow_momentum: float = 0.5,
        slow_lr: float = 1.0,
        average_buffers: bool = True,
        momentum_sync: str = "local",
        **averaging,
    ):
        if not 0 <= slow_momentum < 1:
            raise ValueError(f"slow_momentum must be in [0, 1), got {slow_momentum}")
        if slow_lr <= 0:
            raise ValueError(f"slow_lr must be positive, got {slow_lr}")
        self.slow_momentum, self.slow_lr = slow_momentum, slow_lr
        outer = lambda params: SlowMomentum(params, self.inner_lr, slow_momentum, slow_lr)  # noqa: E731
        super().__init__(meter, local_steps, outer, average_buffers, momentum_sync, **averaging)

    def inner_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def outer_step(self, fragment=None) -> None:
        if self.inner_lr() <= 0:  # no inner progress to scale (e.g. warmup from 0): keep the average
            with torch.no_grad():
                for x, start in zip(fragment_views(self.parameters, fragment), fragment_views(self.start, fragment)):
                    start.copy_(x)
            return
        super().outer_step(fragment)


class DiLoCo(OuterStepSGD):
    OPTIONS = (*PLSGD.OPTIONS, "outer_lr", "outer_momentum")
    default_optimizer = ("adamw", 1e-3)  # Douillard et al. 2023, sec. 2: AdamW inside; its LR suits AdamW

    def __init__(
        self,
        meter: CommMeter,
        local_steps: int,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        average_buffers: bool = True,
        momentum_sync: str = "local",
        **averaging,
    ):
        self.outer_lr, self.outer_momentum = outer_lr, outer_momentum
        outer = lambda params: torch.optim.SGD(params, lr=outer_lr, momentum=outer_momentum, nesterov=True)  # noqa: E731
        super().__init__(meter, local_steps, outer, average_buffers, momentum_sync, **averaging)
