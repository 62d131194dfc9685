"""One contiguous buffer for a list of tensors, so a sync is one collective, not one per tensor."""

from __future__ import annotations

import copy

import torch

from utilities.distributed import CommMeter, all_reduce_mean


class FlatBuffer:
    """A cached flat copy of ``tensors`` (all of one dtype and device).

    ``gather`` copies the live tensors in, ``scatter`` copies the buffer back out; in between
    the buffer can be all-reduced as a single message.
    """

    def __init__(self, tensors: list):
        if not tensors:
            raise ValueError("tensors must not be empty")
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) != 1:
            raise ValueError(f"tensors must share one dtype, got {sorted(map(str, dtypes))}")
        self.tensors = tensors
        self.flat = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
        self.views = list(torch.split(self.flat, [t.numel() for t in tensors]))

    def gather(self) -> torch.Tensor:
        with torch.no_grad():
            torch._foreach_copy_(self.views, [t.reshape(-1) for t in self.tensors])
        return self.flat

    def scatter(self, source: torch.Tensor = None) -> None:
        """Copy ``source`` (default: the buffer) back into the live tensors."""
        views = self.views if source is None else list(torch.split(source, [t.numel() for t in self.tensors]))
        with torch.no_grad():
            for tensor, view in zip(self.tensors, views):
                tensor.copy_(view.view_as(tensor))

    def average(self, meter: CommMeter = None) -> None:
        """Replace every tensor by its mean over ranks, with one all-reduce."""
        all_reduce_mean(self.gather(), meter)
        self.scatter()


def floating_state(module: torch.nn.Module, include_buffers: bool) -> list:
    """The parameters, and optionally the floating-point buffers (BatchNorm running statistics)."""
    tensors = [p.data for p in module.parameters()]
    if include_buffers:
        tensors += [b for b in module.buffers() if b.is_floating_point()]
    return tensors


def averaged_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` holding the mean over ranks of its parameters and buffers (for evaluation
    between syncs; the live model is untouched and the traffic is not training communication)."""
    averaged = copy.deepcopy(module)
    FlatBuffer(floating_state(averaged, include_buffers=True)).average()
    return averaged
