"""Scheduling of Gloo's network threads, so that a slow link does not interrupt the computation.

Gloo's TCP transport runs one event-loop thread per process group ("gloo_tcp_loop"). While an
all-reduce streams over a slow link that thread wakes for every few packets: about ten thousand
context switches a second per rank on a 100 Mbit/s link (bench/comm_thread_cost.py). Under the
default policy each wake-up preempts the computation at once, so a compute-bound rank lost a good
part of its speed while an overlapped round was in flight, although the thread itself needs little
CPU. Under SCHED_BATCH a waking thread does not preempt a running one: it runs on an idle core at
once, or when the running thread's time slice ends, and reads what arrived meanwhile in one go. The
link's rate is unchanged; the figures are in docs/RESULTS.md (issue 16).

Linux only; elsewhere, and for threads that are gone, nothing happens. Lowering one's own threads to
SCHED_BATCH needs no privilege.
"""

from __future__ import annotations

import os

GLOO_THREAD_NAMES = ("gloo_tcp_loop",)
POLICIES = ("batch", "normal")


def _named_threads(names: tuple) -> list:
    """The ids of this process's threads whose name is one of ``names``."""
    found = []
    try:
        thread_ids = os.listdir("/proc/self/task")
    except OSError:  # no /proc: not Linux
        return found
    for thread_id in thread_ids:
        try:
            with open(f"/proc/self/task/{thread_id}/comm") as comm:
                if comm.read().strip() in names:
                    found.append(int(thread_id))
        except OSError:  # the thread ended meanwhile
            continue
    return found


def set_comm_thread_policy(policy: str) -> int:
    """Give Gloo's network threads the scheduling ``policy`` ("batch" or "normal"); call it after the
    process groups are made (each group's device starts its own thread), and again later: a thread that
    has not run yet still bears its creator's name, so it is found only once it has. Returns how many
    were set."""
    if policy not in POLICIES:
        raise ValueError(f"comm thread policy must be one of {POLICIES}, got {policy!r}")
    scheduler = getattr(os, "SCHED_BATCH" if policy == "batch" else "SCHED_OTHER", None)
    if scheduler is None or not hasattr(os, "sched_setscheduler"):
        return 0
    changed = 0
    for thread_id in _named_threads(GLOO_THREAD_NAMES):
        try:
            os.sched_setscheduler(thread_id, scheduler, os.sched_param(0))
            changed += 1
        except (ProcessLookupError, PermissionError):  # ended meanwhile; a policy a sandbox forbids
            continue
    return changed
