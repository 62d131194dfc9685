"""SlowMo and DiLoCo: local steps, then an outer step on the averaged change.

SlowMo (Wang, Tantia, Ballas, Rabbat 2020, Algorithm 1): every J inner steps, average the
parameters to x_avg, then with d = x_start - x_avg
    u = beta * u + d / lr_inner,    x = x_start - alpha * lr_inner * u.
With alpha = 1 and beta = 0 this is exactly local SGD.

DiLoCo (Douillard et al. 2023, Algorithm 1): the same shape, with the outer step an SGD
with Nesterov momentum (outer lr 0.7, momentum 0.9) on the pseudo-gradient d, and AdamW
as the default inner optimizer.
"""

from __future__ import annotations

import torch

from train.sync.base import RunShape
from train.sync.plsgd import PLSGD, averaging_options
from utilities.distributed import CommMeter


class SlowMo(PLSGD):
    def __init__(self, meter: CommMeter, local_steps: int, slow_momentum: float = 0.5, slow_lr: float = 1.0,
                 average_buffers: bool = True, momentum_sync: str = "local", **averaging):
        super().__init__(meter, local_steps, average_buffers, momentum_sync, **averaging)
        if not 0 <= slow_momentum < 1:
            raise ValueError(f"slow_momentum must be in [0, 1), got {slow_momentum}")
        if slow_lr <= 0:
            raise ValueError(f"slow_lr must be positive, got {slow_lr}")
        self.slow_momentum, self.slow_lr = slow_momentum, slow_lr

    @classmethod
    def from_config(cls, config, meter: CommMeter, shape: RunShape):
        return cls(meter, config.local_steps, config.slow_momentum, config.slow_lr, config.average_buffers,
                   config.momentum_sync, **averaging_options(config))

    def prepare(self, model, optimizer):
        model = super().prepare(model, optimizer)
        self.parameters = [p.data for p in model.parameters()]
        self.start = [p.clone() for p in self.parameters]  # x at the start of the local period
        self.outer_momentum = [torch.zeros_like(p) for p in self.parameters]  # u
        return model

    def after_average(self, fragment=None) -> None:
        if fragment is None:
            self.outer_step()  # the whole state: outer_step() as before
        else:
            self.outer_step(fragment)
        super().after_average(fragment)

    def fragment_views(self, tensors: list, fragment) -> list:
        """``tensors`` (one per parameter), or with a streamed fragment only the parameter elements in it."""
        if fragment is None:
            return tensors
        return [tensors[i].view(-1)[start:stop] for i, start, stop in fragment.pieces if i < len(tensors)]

    def outer_step(self, fragment=None) -> None:
        parameters, starts = self.fragment_views(self.parameters, fragment), self.fragment_views(self.start, fragment)
        lr_inner = self.optimizer.param_groups[0]["lr"]
        if lr_inner <= 0:  # no inner progress to scale (e.g. warmup from 0): keep the average
            for x, start in zip(parameters, starts):
                start.copy_(x)
            return
        with torch.no_grad():
            for x, start, u in zip(parameters, starts, self.fragment_views(self.outer_momentum, fragment)):
                change = start - x  # d = x_start - x_avg
                u.mul_(self.slow_momentum).add_(change, alpha=1 / lr_inner)
                x.copy_(start - self.slow_lr * lr_inner * u)
                start.copy_(x)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "start": self.start, "outer_momentum": self.outer_momentum}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for mine, saved in zip(self.start + self.outer_momentum, state["start"] + state["outer_momentum"]):
            mine.copy_(saved)


class DiLoCo(SlowMo):
    def __init__(self, meter: CommMeter, local_steps: int, outer_lr: float = 0.7, outer_momentum: float = 0.9,
                 average_buffers: bool = True, momentum_sync: str = "local", **averaging):
        super().__init__(meter, local_steps, 0.0, 1.0, average_buffers, momentum_sync, **averaging)
        self.outer_lr, self.outer_momentum_factor = outer_lr, outer_momentum

    @classmethod
    def from_config(cls, config, meter: CommMeter, shape: RunShape):
        return cls(meter, config.local_steps, config.outer_lr, config.outer_momentum, config.average_buffers,
                   config.momentum_sync, **averaging_options(config))

    def prepare(self, model, optimizer):
        model = super().prepare(model, optimizer)
        # The outer optimizer updates the period-start copy; its .grad holds the pseudo-gradient.
        self.global_parameters = [torch.nn.Parameter(p, requires_grad=False) for p in self.start]
        self.outer_optimizer = self.build_outer_optimizer(self.global_parameters)
        # Streamed fragments: one outer optimizer per fragment, over views of the period-start copy.
        self.fragment_optimizers = [
            self.build_outer_optimizer([torch.nn.Parameter(view, requires_grad=False)
                                        for view in self.fragment_views(self.start, fragment)])
            for fragment in (self.streamer.fragments if self.streamer is not None else [])]
        return model

    def build_outer_optimizer(self, parameters: list) -> torch.optim.Optimizer:
        return torch.optim.SGD(parameters, lr=self.outer_lr, momentum=self.outer_momentum_factor, nesterov=True)

    def outer_step(self, fragment=None) -> None:
        optimizer = self.outer_optimizer if fragment is None else self.fragment_optimizers[fragment.index]
        starts = [p for group in optimizer.param_groups for p in group["params"]]
        parameters = self.fragment_views(self.parameters, fragment)
        with torch.no_grad():
            for x, start in zip(parameters, starts):
                start.grad = start - x  # pseudo-gradient: x_start - x_avg
            optimizer.step()
            for x, start in zip(parameters, starts):
                x.copy_(start)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "outer_optimizer": self.outer_optimizer.state_dict(),
                "fragment_optimizers": [optimizer.state_dict() for optimizer in self.fragment_optimizers]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        for optimizer, saved in zip(self.fragment_optimizers, state.get("fragment_optimizers", [])):
            optimizer.load_state_dict(saved)

