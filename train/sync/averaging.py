"""Parameter averaging for the local methods: blocking or overlapped, full or reduced precision.

One round is ``begin`` (snapshot the flat parameters, start one all-reduce) and ``complete``
(wait, then replace the snapshot by the average). Blocking rounds complete at once. With
``overlap`` the all-reduce runs while the next local steps compute (as in overlapping local
SGD, Wang et al. 2020, "Overlap Local-SGD"); the steps taken meanwhile are kept on top of the
average: x = average + (x_now - snapshot), which is the average exactly when nothing moved.

With a reduced ``wire_dtype`` what is sent is the change since the last agreed point, in
bf16/fp16, and the rounding error stays on the rank and is added to the next change
(error feedback, Seide et al. 2014; Karimireddy et al. 2019): every rank then computes the
same new point ``reference + mean change`` from the same reduced message.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

from train.sync.base import TrainingDiverged
from train.sync.flat_buffer import FlatBuffer
from utilities.distributed import CommMeter, is_distributed, world_size

WIRE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Round(NamedTuple):
    """An averaging round begun and not yet completed."""

    snapshot: Optional[torch.Tensor]  # the parameters when it began (overlapped rounds only)
    message: torch.Tensor  # what was sent; the sum arrives in it
    work: object  # the all-reduce's handle
    begun: float  # time.perf_counter() when it began
    has_control: bool  # the message carries one extra element after the state (overlap_depth's proposal)


class Averager:
    def __init__(
        self, state: FlatBuffer, meter: CommMeter, wire_dtype: str = "fp32", group=None, check_finite: bool = True
    ):
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire_dtype must be one of {tuple(WIRE_DTYPES)}, got {wire_dtype!r}")
        self.state, self.meter, self.group = state, meter, group
        self.wire_dtype = WIRE_DTYPES[wire_dtype]
        self.reference = state.gather().clone() if self.wire_dtype is not None else None
        self.error = torch.zeros_like(self.reference) if self.wire_dtype is not None else None
        self.pending: Optional[Round] = None
        self.done_after: Optional[int] = None  # steps after which poll() first saw the round in flight finished
        self.waited = 0.0  # seconds the last completion waited
        # A rank that must stop (--on-nan stop) sends NaN: a non-finite average stops every rank at once.
        self.check_finite = check_finite

    def begin(self, overlapping: bool = False, control: Optional[float] = None) -> None:
        """Start the all-reduce of the current parameters without waiting for it. Only an overlapped
        round keeps a snapshot: the parameters move before it completes. ``control``, when given,
        travels as one extra element whose sum over ranks ``complete`` returns (see overlap_depth.py)."""
        if self.pending is not None:
            raise RuntimeError("an averaging round is still in flight; complete it before beginning another")
        current = self.state.gather()
        snapshot = current.clone() if overlapping else None
        if self.wire_dtype is None:
            message = current.clone() if overlapping and control is None else current
        else:
            change = current - self.reference + self.error
            message = change.to(self.wire_dtype)
            self.error = change - message.float()
        if control is not None:
            message = torch.cat([message, message.new_tensor([control])])
        work = dist.all_reduce(message, group=self.group, async_op=True)
        self.pending = Round(snapshot, message, work, time.perf_counter(), control is not None)
        self.done_after: Optional[int] = None

    def poll(self, steps_in_flight: int) -> None:
        """Note, without waiting, whether the round in flight has finished after ``steps_in_flight`` steps."""
        if self.pending is not None and self.done_after is None and self.pending.work.is_completed():
            self.done_after = steps_in_flight

    def complete(self, after_average=None) -> Optional[float]:
        """Wait for the round begun last, install the average (then ``after_average()``, e.g. an
        outer optimizer step), and keep whatever local progress was made in between."""
        snapshot, message, work, begun, has_control = self.pending
        self.pending = None
        waited = time.perf_counter()
        work.wait()
        # Held up: the whole round when blocking, only the tail when overlapped. In flight: until now.
        done = time.perf_counter()
        self.waited = done - waited
        self.meter.record(message, done - waited, done - begun)
        progress = self.state.gather() - snapshot if snapshot is not None else None
        control = float(message[-1]) if has_control else None
        mean = (message[:-1] if has_control else message).float().div_(dist.get_world_size(self.group))
        if self.check_finite and not bool(torch.isfinite(mean).all()):
            raise TrainingDiverged(
                "the averaged model is not finite: a rank's loss diverged (or one was stopped by "
                "--on-nan stop); lower --lr, add --warmup-epochs, or pass --on-nan skip"
            )
        new_point = mean if self.wire_dtype is None else self.reference + mean
        self.state.scatter(new_point)
        if after_average is not None:
            after_average()
        if self.wire_dtype is not None:
            self.reference = self.state.gather().clone()
        if progress is not None:
            self.state.scatter(self.state.gather().add_(progress))
        return control

    def average(self, after_average=None) -> None:
        """One blocking round."""
        self.begin(overlapping=False)
        self.complete(after_average)

    def restart_from_current(self) -> None:
        """Make the current (agreed) parameters the reference of later reduced-precision changes."""
        if self.wire_dtype is not None:
            self.reference = self.state.gather().clone()
            self.error.zero_()

    def state_dict(self) -> dict:
        state = {"reference": self.reference, "error": self.error}
        if self.pending is not None:  # a mid-epoch checkpoint with an overlapped round in flight
            self.pending.work.wait()  # the transfer ends now; the round stays open and completes after the resume
            state["pending"] = {
                "snapshot": self.pending.snapshot,
                "message": self.pending.message,
                "control": self.pending.has_control,
            }
        return state

    def load_state_dict(self, state: dict) -> None:
        self.reference, self.error = state["reference"], state["error"]
        pending = state.get("pending")
        self.pending = (
            None
            if pending is None
            else Round(
                pending["snapshot"],
                pending["message"],
                _FinishedWork(),
                time.perf_counter(),
                pending.get("control", False),
            )
        )
        self.done_after = None


class _FinishedWork:
    """Stands for the all-reduce of a round restored from a checkpoint: its result is already in the message."""

    def wait(self) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def averaging_options(config) -> dict:
    """The averaging settings every local method shares."""
    hierarchy = tuple(config.hierarchy) if config.hierarchy else None
    ranks_per_node = (
        config.ranks_per_node
        or int(os.environ.get("LOCAL_WORLD_SIZE", 0))
        or int(os.environ.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0)
    )
    if hierarchy is not None and ranks_per_node < 1:
        raise ValueError("--hierarchy needs to know which ranks share a node: pass --ranks-per-node")
    if hierarchy is not None and is_distributed() and world_size() % ranks_per_node:  # before any collective
        raise ValueError(
            f"--hierarchy: {world_size()} ranks do not split into nodes of {ranks_per_node} "
            f"(--ranks-per-node); give a divisor of the number of ranks"
        )
    return {
        "overlap": config.overlap,
        "sync_dtype": config.sync_dtype,
        "hierarchy": hierarchy,
        "ranks_per_node": ranks_per_node,
        "overlap_steps": config.overlap_steps,
        "fragments": config.fragments,
    }


AUTO_FRAGMENTS = 8  # --fragments auto streams at most this many fragments a period (one every J/8 steps)
MIN_FRAGMENT_ELEMENTS = 16384  # and none below 64 KB of fp32: smaller rounds cost more in fixed overhead than they hide


def automatic_fragments(overlap: bool, local_steps: int, hierarchy: Optional[tuple], momentum_sync: str) -> int:
    """``--fragments auto``: with --overlap, min(J, 8) fragments, so that each fragment's round is short and the
    depth it needs small (a stale average costs accuracy by its depth, not by the fragment's share:
    docs/RESULTS.md, issue 16); without --overlap, or where fragments do not apply, the whole state at once.
    ``prepare`` lowers the count further for a small state (MIN_FRAGMENT_ELEMENTS)."""
    if not overlap or hierarchy is not None or momentum_sync != "local":
        return 1
    return min(local_steps, AUTO_FRAGMENTS)


def check_fragments(fragments: int, local_steps: int, hierarchy: Optional[tuple], momentum_sync: str) -> None:
    if not 1 <= fragments <= local_steps:
        raise ValueError(
            f"--fragments must be between 1 and --local-steps ({local_steps}): one fragment begins every "
            f"J / F steps; got {fragments}"
        )
    if fragments > 1 and hierarchy is not None:
        raise ValueError("--fragments cannot be combined with --hierarchy")
    if fragments > 1 and momentum_sync != "local":
        raise ValueError("--fragments keep the optimizer's momentum local: use --momentum-sync local")
