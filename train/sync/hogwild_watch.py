"""Keeping LAPSGD/LPPSGD worker processes and their rank alive together, or dead together.

- A worker that stops making steps (stopped, hung, swapped out) makes its rank fail within
  ``--timeout`` seconds with one line, instead of the rank waiting for its report for ever.
- A worker dies with its rank (Linux: ``PR_SET_PDEATHSIG``; elsewhere a thread polls the parent
  pid), so a killed rank leaves no orphan holding a copy of the data and the model.
- Workers ignore the stop signals (SIGTERM, SIGUSR1): SLURM signals every process of a job step,
  and it is the rank that decides, with the other ranks, where to stop (train/preemption.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

from train.preemption import STOP_SIGNALS

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_POLL_SECONDS = 0.5


class WorkerFailed(RuntimeError):
    """A worker process died or stopped making progress; the message names it."""


def bind_to_rank(rank_pid: int) -> None:
    """Called first thing in a worker: ignore the stop signals and die when the rank dies."""
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # delivered even to a stopped worker
    else:
        threading.Thread(target=_exit_when_orphaned, args=(rank_pid,), daemon=True).start()
    if os.getppid() != rank_pid:  # the rank died before the death signal was armed
        os._exit(1)


def _exit_when_orphaned(rank_pid: int) -> None:
    while os.getppid() == rank_pid:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


class WorkerWatch:
    """Each worker counts its own steps in shared memory; the rank checks that every busy worker's
    count moves at least once per ``timeout`` seconds."""

    def __init__(self, context, workers: int, timeout: float):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.steps = context.Array("q", workers, lock=False)  # one writer per slot: no lock needed
        self.timeout = timeout
        self.start_epoch()

    def start_epoch(self) -> None:
        self.seen = list(self.steps)
        self.moved_at = [time.monotonic()] * len(self.seen)

    def check(self, processes: list, rank: int, idle: set = frozenset()) -> None:
        """Raise WorkerFailed for a worker that exited, or that is busy (not in ``idle``) and stuck."""
        now = time.monotonic()
        for index, process in enumerate(processes):
            if process.exitcode is not None:
                raise WorkerFailed(
                    f"worker {index} of rank {rank} (pid {process.pid}) exited with code {process.exitcode}"
                )
            count = self.steps[index]
            if count != self.seen[index] or index in idle:
                self.seen[index], self.moved_at[index] = count, now
            elif now - self.moved_at[index] > self.timeout:
                raise WorkerFailed(
                    f"worker {index} of rank {rank} (pid {process.pid}) made no step for "
                    f"{self.timeout:g} s (--timeout): it is stopped or hung"
                )
