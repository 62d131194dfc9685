"""MBSGD: synchronous mini-batch SGD; DDP all-reduces the gradients of every step.

(No `from __future__ import annotations` here: DDP checks the comm hook's annotations at run time.)
"""

import contextlib
import inspect
import time

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd
from torch.nn.parallel import DistributedDataParallel

from train.sync.base import Sync
from train.sync.flat_buffer import FlatBuffer
from utilities.distributed import CommMeter, is_distributed

# Newer torch names DDP's per-forward buffer broadcast forward_sync_buffers (and deprecates broadcast_buffers);
# either way the buffers are still made equal once, at construction.
NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)

WIRE_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16, "powersgd": None}


class _CountedCollectives:
    """Stands in for ``torch.distributed`` inside torch's PowerSGD hook, so that every all-reduce it
    makes (uncompressed tensors, P, Q) is counted in the meter with its exact payload."""

    def __init__(self, meter: CommMeter):
        self.meter = meter

    def __getattr__(self, name):
        return getattr(dist, name)

    def all_reduce(self, tensor, *args, **kwargs):
        self.meter.record(tensor, 0.0, 0.0)  # times: BucketTimes, per step
        return dist.all_reduce(tensor, *args, **kwargs)


class BucketTimes:
    """When DDP's bucket all-reduces of one step were launched and finished.

    The last bucket is launched when the backward pass has computed its last gradient; from then
    on the step only waits. So the step was held up from that launch until the last bucket
    finished, and communication was in flight from the first launch to the last finish.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.first_launch = self.last_launch = self.last_finish = None

    def launched(self) -> float:
        now = time.perf_counter()
        self.first_launch = self.first_launch if self.first_launch is not None else now
        self.last_launch = now
        return now

    def finished(self) -> None:
        self.last_finish = max(self.last_finish or 0.0, time.perf_counter())

    def step_seconds(self) -> tuple:
        """(held up, in flight) for the step whose buckets were timed; then start over."""
        if self.last_launch is None:
            return 0.0, 0.0
        times = max(0.0, self.last_finish - self.last_launch), self.last_finish - self.first_launch
        self.clear()
        return times


def counted_powersgd_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's PowerSGD (Vogels et al. 2019) with error feedback; its first iterations send the plain
    gradients (torch's warm-up), counted like the default hook."""
    meter, times, powersgd_state = state
    if powersgd_state.iter < powersgd_state.start_powerSGD_iter:
        powersgd_state.maybe_increase_iter(bucket)
        return counted_allreduce_hook((meter, times, None), bucket)
    times.launched()
    future = powersgd.powerSGD_hook(powersgd_state, bucket)

    def finished(done):
        times.finished()
        return done.value()

    return future.then(finished)


def counted_allreduce_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's all-reduce of a gradient bucket (mean over ranks), optionally sent in fp16/bf16 (as DDP's
    fp16_compress_hook does), and counted in the meter with the bytes that actually go on the wire.
    DDP overlaps these with the backward pass; ``BucketTimes`` turns their times into held-up seconds."""
    meter, times, wire_dtype = state
    buffer = bucket.buffer()
    message = buffer if wire_dtype is None else buffer.to(wire_dtype)
    message.div_(dist.get_world_size())
    meter.record(message, 0.0, 0.0)
    times.launched()
    future = dist.all_reduce(message, async_op=True).get_future()

    def finished(done):
        times.finished()
        if wire_dtype is None:
            return done.value()[0]
        buffer.copy_(done.value()[0])
        return buffer

    return future.then(finished)


class MBSGD(Sync):
    OPTIONS = ("grad_compression", "bucket_cap_mb")

    def __init__(self, meter: CommMeter, grad_compression: str = "none", bucket_cap_mb: float = 25.0):
        super().__init__(meter)
        if grad_compression not in WIRE_DTYPES:
            raise ValueError(f"grad_compression must be one of {tuple(WIRE_DTYPES)}, got {grad_compression!r}")
        if bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be positive, got {bucket_cap_mb}")
        self.bucket_cap_mb, self.grad_compression = bucket_cap_mb, grad_compression
        self.wire_dtype = WIRE_DTYPES[grad_compression]

    def prepare(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        if not is_distributed():
            self.ddp = None
            return model
        device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
        # Buffers (BatchNorm statistics) are averaged after each step instead of DDP's broadcast of rank 0's
        # before each forward: that left every rank with its own statistics after the step, so replicas never
        # agreed and evaluation differed per rank.
        self.ddp = DistributedDataParallel(
            model, device_ids=device_ids, bucket_cap_mb=self.bucket_cap_mb, **NO_FORWARD_BUFFER_SYNC
        )
        self.times = BucketTimes()
        if self.grad_compression == "powersgd":
            powersgd.dist = _CountedCollectives(self.meter)
            # Rank 2 approximations after 10 plain steps; error feedback keeps what compression drops.
            state = powersgd.PowerSGDState(
                process_group=None,
                matrix_approximation_rank=2,
                start_powerSGD_iter=10,
                use_error_feedback=True,
                warm_start=True,
            )
            self.ddp.register_comm_hook((self.meter, self.times, state), counted_powersgd_hook)
        else:
            self.ddp.register_comm_hook((self.meter, self.times, self.wire_dtype), counted_allreduce_hook)
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.buffers = FlatBuffer(buffers) if buffers else None
        return self.ddp

    def no_sync(self):
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def gradients_shared(self, step: int) -> bool:
        return self.ddp is not None

    def replicas_agree_now(self) -> bool:
        return True

    def before_step(self, step: int) -> None:
        if self.ddp is not None:
            self.meter.add_time(*self.times.step_seconds())

    def after_step(self, step: int) -> None:
        if self.ddp is None:
            return
        self.meter.count_round()
        if self.buffers is not None:
            self.buffers.average(self.meter)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
