"""Baseline: PyTorch's own PeriodicModelAverager (post-local SGD's averager in torch.distributed),
run in the same loop on the same shards, so benchmarks compare like with like."""

from __future__ import annotations

import time

import torch
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

from train.sync.averaging import Averager
from train.sync.base import Sync, TrainingDiverged
from train.sync.flat_buffer import FlatBuffer, floating_state
from train.sync.plsgd import PLSGD
from utilities.distributed import is_distributed


class TorchPeriodicAverager(PLSGD):
    """torch's averager is called after every step and averages the parameters (one flattened
    all-reduce) whenever its own counter reaches the period. Torch does not average BatchNorm
    statistics; they are averaged here as in PLSGD, so only the parameter path differs."""

    OPTIONS = ("local_steps", "average_buffers", "momentum_sync")
    REFUSED_OPTIONS = (*Sync.REFUSED_OPTIONS, "overlap", "sync_dtype", "hierarchy", "fragments")
    refusal_hint = "it runs torch's blocking fp32 averager; use --training-type PLSGD for these"

    def prepare(self, model, optimizer):
        model = super().prepare(model, optimizer)
        self.parameters = list(model.parameters())
        self.parameter_bytes = sum(p.numel() * p.element_size() for p in self.parameters)
        self.torch_averager = (
            PeriodicModelAverager(period=self.local_steps, warmup_steps=0) if is_distributed() else None
        )
        if self.torch_averager is not None:
            # torch averages when its counter is a multiple of the period, counting from 0: starting at 1
            # makes it average after steps J, 2J, ... as PLSGD does, not after steps 1, J+1, ...
            self.torch_averager.step = 1
        return model

    def after_step(self, step: int) -> None:
        self.steps_since_sync += 1
        if self.torch_averager is None:
            return
        averages_now = self.torch_averager.step % self.local_steps == 0  # torch's own rule, warmup 0
        started = time.perf_counter()
        self.torch_averager.average_parameters(self.parameters)
        if averages_now:
            seconds = time.perf_counter() - started
            self.meter.count_round()
            self.meter.collectives += 1
            self.meter.bytes += self.parameter_bytes
            self.meter.add_time(seconds, seconds)
            if not all(bool(torch.isfinite(p).all()) for p in self.parameters):
                raise TrainingDiverged(
                    "the averaged model is not finite: a rank's loss diverged (or one was stopped "
                    "by --on-nan stop); lower --lr, add --warmup-epochs, or pass --on-nan skip"
                )
            buffers = [b for b in self.model.buffers() if b.is_floating_point()]
            if self.average_buffers and buffers:
                FlatBuffer(buffers).average(self.meter)
            self.apply_momentum_rule()
            self.steps_since_sync = 0

    def finish(self) -> None:
        # torch's averager replaces each p.data by a view of its own flat buffer: rebind ours to the live tensors.
        if is_distributed():
            self.state = FlatBuffer(floating_state(self.model, self.average_buffers))
            self.averager = Averager(self.state, self.meter)
        super().finish()

    def state_dict(self) -> dict:
        torch_step = self.torch_averager.step if self.torch_averager is not None else 0
        return {**super().state_dict(), "torch_step": torch_step}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.torch_averager is not None:
            self.torch_averager.step = state["torch_step"]
