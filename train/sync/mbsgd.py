"""MBSGD: synchronous mini-batch SGD; DDP all-reduces the gradients of every step.

(No `from __future__ import annotations` here: DDP checks the comm hook's annotations at run time.)
"""


import contextlib
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from train.sync.base import RunShape, Sync
from utilities.distributed import CommMeter, is_distributed


def counted_allreduce_hook(meter: CommMeter, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce of a gradient bucket (mean over ranks), counted in ``meter``.

    DDP overlaps these with the backward pass, so the seconds recorded are the time each
    bucket's all-reduce was in flight, not time the step waited for it.
    """
    tensor = bucket.buffer()
    tensor.div_(dist.get_world_size())
    started = time.perf_counter()
    future = dist.all_reduce(tensor, async_op=True).get_future()

    def finished(done):
        meter.record(tensor, time.perf_counter() - started)
        return done.value()[0]

    return future.then(finished)


class MBSGD(Sync):
    def __init__(self, meter: CommMeter, micro_batches: int = 1):
        super().__init__(meter)
        self.micro_batches = micro_batches

    @classmethod
    def from_config(cls, config, meter: CommMeter, shape: RunShape) -> "MBSGD":
        return cls(meter, shape.micro_batches)

    def prepare(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        if not is_distributed():
            self.ddp = None
            return model
        device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
        self.ddp = DistributedDataParallel(model, device_ids=device_ids)
        self.ddp.register_comm_hook(self.meter, counted_allreduce_hook)
        # DDP broadcasts rank 0's buffers (BatchNorm statistics) before every training forward.
        self.buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
        return self.ddp

    def no_sync(self):
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def replicas_agree_now(self) -> bool:
        return True

    def after_step(self, step: int) -> None:
        if self.ddp is None:
            return
        self.meter.count_round()
        if self.buffer_bytes:
            self.meter.bytes += self.buffer_bytes * self.micro_batches
            self.meter.collectives += self.micro_batches


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
