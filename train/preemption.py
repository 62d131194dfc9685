"""Preemption: a SIGTERM or SIGUSR1 stops every rank at the same step, checkpointed, with exit code 75.

Clusters warn a job before killing it: SLURM sends the signal chosen with ``--signal=USR1@120``
(or SIGTERM at the time limit), torchrun forwards SIGTERM to its ranks. The handler only sets a
flag; the ranks then agree with one tiny all-reduce (MAX of the flags) every ``AGREE_EVERY_STEPS``
optimizer steps and at each epoch end, so one rank's signal stops them all at the same step,
deterministically. The loop writes a checkpoint there (mid-epoch when needed) and every rank
exits with ``PREEMPTED_EXIT_CODE`` once all of them have written their file.
"""

from __future__ import annotations

import signal
from typing import Optional

import torch
import torch.distributed as dist

from utilities import early_signals
from utilities.distributed import is_distributed

# EX_TEMPFAIL of sysexits.h: a temporary failure, run again (with --resume auto) to continue.
PREEMPTED_EXIT_CODE = 75
# Steps between agreements: one 8-byte all-reduce per 10 steps is noise next to a step's own
# traffic, and 10 steps take far less than the 120 s warning a scheduler gives.
AGREE_EVERY_STEPS = 10
STOP_SIGNALS = early_signals.STOP_SIGNALS


class Preempted(Exception):
    """Every rank agreed to stop and has written its checkpoint; the run continues with --resume auto."""

    def __init__(self, signal_name: str, epoch: int, step: int):
        super().__init__(
            f"preempted by {signal_name} after epoch {epoch}, step {step}: checkpoint written; "
            f"continue with --resume auto (exit code {PREEMPTED_EXIT_CODE})"
        )


class PreemptionWatch:
    """Remembers a stop signal and lets the ranks agree on it."""

    def __init__(self, every_steps: int = AGREE_EVERY_STEPS):
        if every_steps < 1:
            raise ValueError(f"every_steps must be at least 1, got {every_steps}")
        self.every_steps = every_steps
        self.received: Optional[int] = None  # the first stop signal this process got

    def install(self) -> "PreemptionWatch":
        """Catch the stop signals (main thread only, as Python requires)."""
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, self.on_signal)
        self.received = self.received or early_signals.first_received()
        return self

    def on_signal(self, signum, frame) -> None:
        # Only a flag: the step in progress finishes, and the ranks decide together where to stop.
        self.received = self.received or signum

    def due(self, step: int) -> bool:
        """Whether the ranks agree after optimizer step ``step`` (the same answer on every rank)."""
        return step % self.every_steps == 0

    def agreed(self, device: torch.device) -> bool:
        """Collective: True on every rank when any rank got a stop signal (the highest one is kept, to name it).

        Control traffic, deliberately not counted in the communication meter: the meter measures
        what the training method costs, and a resumed run must count exactly what an uninterrupted one does.
        """
        flag = torch.tensor([self.received or 0], dtype=torch.int32, device=device)
        if is_distributed():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.agreed_signal = int(flag.item())
        return self.agreed_signal != 0

    def stop(self, epoch: int, step: int) -> None:
        """Raise ``Preempted`` once every rank has written its checkpoint (a launcher that kills the
        other ranks when the first exits must not cut a file short)."""
        if is_distributed():
            dist.barrier()
        raise Preempted(signal.Signals(self.agreed_signal).name, epoch, step)
