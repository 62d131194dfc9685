"""MBSGD: synchronous mini-batch SGD; DDP all-reduces the gradients of every step.

(No `from __future__ import annotations` here: DDP checks the comm hook's annotations at run time.)
"""


import contextlib
import time

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd
from torch.nn.parallel import DistributedDataParallel

from train.sync.base import RunShape, Sync
from utilities.distributed import CommMeter, is_distributed


WIRE_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16, "powersgd": None}


class _CountedCollectives:
    """Stands in for ``torch.distributed`` inside torch's PowerSGD hook, so that every all-reduce it
    makes (uncompressed tensors, P, Q) is counted in the meter with its exact payload."""

    def __init__(self, meter: CommMeter):
        self.meter = meter

    def __getattr__(self, name):
        return getattr(dist, name)

    def all_reduce(self, tensor, *args, **kwargs):
        self.meter.record(tensor, 0.0)
        return dist.all_reduce(tensor, *args, **kwargs)


def counted_powersgd_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's PowerSGD (Vogels et al. 2019) with error feedback; its first iterations send the plain
    gradients (torch's warm-up), counted like the default hook. Seconds are each bucket's time in flight."""
    meter, powersgd_state = state
    if powersgd_state.iter < powersgd_state.start_powerSGD_iter:
        powersgd_state.maybe_increase_iter(bucket)
        return counted_allreduce_hook((meter, None), bucket)
    started = time.perf_counter()
    future = powersgd.powerSGD_hook(powersgd_state, bucket)

    def finished(done):
        meter.seconds += time.perf_counter() - started
        return done.value()

    return future.then(finished)


def counted_allreduce_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's all-reduce of a gradient bucket (mean over ranks), optionally sent in fp16/bf16 (as DDP's
    fp16_compress_hook does), and counted in the meter with the bytes that actually go on the wire.

    DDP overlaps these with the backward pass, so the seconds recorded are the time each
    bucket's all-reduce was in flight, not time the step waited for it.
    """
    meter, wire_dtype = state
    buffer = bucket.buffer()
    message = buffer if wire_dtype is None else buffer.to(wire_dtype)
    message.div_(dist.get_world_size())
    started = time.perf_counter()
    future = dist.all_reduce(message, async_op=True).get_future()

    def finished(done):
        meter.record(message, time.perf_counter() - started)
        if wire_dtype is None:
            return done.value()[0]
        buffer.copy_(done.value()[0])
        return buffer

    return future.then(finished)


class MBSGD(Sync):
    def __init__(self, meter: CommMeter, micro_batches: int = 1, grad_compression: str = "none",
                 bucket_cap_mb: float = 25.0):
        super().__init__(meter)
        if grad_compression not in WIRE_DTYPES:
            raise ValueError(f"grad_compression must be one of {tuple(WIRE_DTYPES)}, got {grad_compression!r}")
        if bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be positive, got {bucket_cap_mb}")
        self.micro_batches, self.bucket_cap_mb, self.grad_compression = micro_batches, bucket_cap_mb, grad_compression
        self.wire_dtype = WIRE_DTYPES[grad_compression]

    @classmethod
    def from_config(cls, config, meter: CommMeter, shape: RunShape) -> "MBSGD":
        return cls(meter, shape.micro_batches, config.grad_compression, config.bucket_cap_mb)

    def prepare(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        if not is_distributed():
            self.ddp = None
            return model
        device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
        self.ddp = DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=self.bucket_cap_mb)
        if self.grad_compression == "powersgd":
            powersgd.dist = _CountedCollectives(self.meter)
            # Rank 2 approximations after 10 plain steps; error feedback keeps what compression drops.
            state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=2, start_powerSGD_iter=10,
                                           use_error_feedback=True, warm_start=True)
            self.ddp.register_comm_hook((self.meter, state), counted_powersgd_hook)
        else:
            self.ddp.register_comm_hook((self.meter, self.wire_dtype), counted_allreduce_hook)
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
