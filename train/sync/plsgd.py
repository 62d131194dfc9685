"""Local SGD (PLSGD).

Every rank takes J optimizer steps on its own shard, then the parameters (and
BatchNorm statistics) are averaged with one all-reduce over a flat buffer (Stich 2019;
Lin et al. 2020). Averaging happens in ``after_step``, after the optimizer has stepped,
never inside ``optimizer.step``: every rank makes the same steps, so the same collectives.

Post-local SGD, local SGD after a phase of mini-batch SGD, is in train.sync.post_local.
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch
import torch.distributed as dist

from train.sync.averaging import (
    MIN_FRAGMENT_ELEMENTS,
    Averager,
    automatic_fragments,
    averaging_options,
    check_fragments,
)
from train.sync.base import RunShape, Sync
from train.sync.flat_buffer import FlatBuffer, averaged_copy, floating_state
from train.sync.fragments import StreamedFragments
from train.sync.overlap_depth import AUTO, AutoDepth
from utilities.checkpoint import CheckpointError
from utilities.distributed import CommMeter, is_distributed

MOMENTUM_SYNC = ("local", "reset", "average")
_MOMENTUM_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


def broadcast_from_rank0(module: torch.nn.Module) -> None:
    """Start every rank from rank 0's model (setup, not counted as training traffic)."""
    if is_distributed():
        buffer = FlatBuffer(floating_state(module, include_buffers=True))
        dist.broadcast(buffer.gather(), src=0)
        buffer.scatter()


AVERAGING_OPTIONS = ("overlap", "overlap_steps", "sync_dtype", "hierarchy", "ranks_per_node", "fragments")


class PLSGD(Sync):
    OPTIONS = ("local_steps", "average_buffers", "momentum_sync", *AVERAGING_OPTIONS)

    def __init__(
        self,
        meter: CommMeter,
        local_steps: int,
        average_buffers: bool = True,
        momentum_sync: str = "local",
        overlap: bool = False,
        sync_dtype: str = "fp32",
        hierarchy: Optional[tuple] = None,
        ranks_per_node: int = 0,
        overlap_steps=1,
        fragments=AUTO,
    ):
        super().__init__(meter)
        if local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, got {local_steps}")
        if momentum_sync not in MOMENTUM_SYNC:
            raise ValueError(f"momentum_sync must be one of {MOMENTUM_SYNC}, got {momentum_sync!r}")
        if hierarchy is not None:
            node_steps, global_steps = hierarchy
            if not 1 <= node_steps <= global_steps or global_steps % node_steps:
                raise ValueError(
                    f"hierarchy needs 1 <= J_node <= J_global with J_global a multiple of J_node, got {hierarchy}"
                )
            if overlap or sync_dtype != "fp32":
                raise ValueError("hierarchy cannot be combined with overlap or a reduced sync_dtype")
            local_steps = global_steps
        if overlap and overlap_steps != AUTO and not 1 <= overlap_steps <= local_steps:
            raise ValueError(
                f"--overlap-steps must be between 1 and --local-steps ({local_steps}): a round completes at the "
                f"latest when the next one begins; got {overlap_steps}"
            )
        self.fragments_auto = fragments == AUTO
        if self.fragments_auto:
            fragments = automatic_fragments(overlap, local_steps, hierarchy, momentum_sync)
        check_fragments(fragments, local_steps, hierarchy, momentum_sync)
        self.fragments = fragments
        self.streamer: Optional[StreamedFragments] = None
        # --overlap-steps auto starts as deep as J allows (hidden at once) and comes down once rounds are measured.
        self.auto_depth = AutoDepth(local_steps) if overlap and overlap_steps == AUTO else None
        self.step_ended: Optional[float] = None
        self.local_steps = local_steps
        self.overlap_steps = overlap_steps
        self.average_buffers = average_buffers
        self.momentum_sync = momentum_sync
        self.overlap, self.sync_dtype = overlap, sync_dtype
        self.hierarchy, self.ranks_per_node = hierarchy, ranks_per_node
        self.steps_since_sync = 0
        self.steps = 0

    @classmethod
    def settings(cls, config, shape: RunShape) -> dict:
        averaging = {name: value for name, value in averaging_options(config).items() if name in cls.OPTIONS}
        return {**super().settings(config, shape), **averaging}

    def prepare(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        broadcast_from_rank0(model)
        self.state = FlatBuffer(floating_state(model, self.average_buffers))
        if self.fragments_auto:
            self.fragments = max(1, min(self.fragments, self.state.flat.numel() // MIN_FRAGMENT_ELEMENTS))
        if self.auto_depth is not None:
            self.auto_depth.set_rounds_per_period(self.fragments)
        if is_distributed() and self.fragments > 1:
            self.streamer = StreamedFragments(self, self.state.tensors, self.fragments, self.meter, self.sync_dtype)
        elif is_distributed():
            self.averager = Averager(self.state, self.meter, self.sync_dtype)
            if self.hierarchy is not None:
                if dist.get_world_size() % self.ranks_per_node:
                    raise ValueError(f"{dist.get_world_size()} ranks do not split into nodes of {self.ranks_per_node}")
                node_group, _ = dist.new_subgroups(group_size=self.ranks_per_node)
                # Only the global round checks for a stopped rank: every rank takes part in it.
                self.node_averager = Averager(self.state, self.meter, group=node_group, check_finite=False)
        return model

    def after_step(self, step: int) -> None:
        self.steps += 1
        self.record_step_time()
        if self.streamer is not None:
            self.streamer.after_step()
        else:
            self.whole_state_rounds()
        self.step_ended = time.perf_counter()

    def whole_state_rounds(self) -> None:
        self.steps_since_sync += 1
        if self.round_in_flight():
            self.averager.poll(self.steps_since_sync)
            if self.steps_since_sync >= self.overlap_depth():
                self.complete_round()  # the all-reduce begun --overlap-steps local steps ago
        if self.steps_since_sync >= self.local_steps:
            self.synchronize()
        elif self.hierarchy is not None and self.steps % self.hierarchy[0] == 0 and is_distributed():
            self.meter.count_round()
            self.node_averager.average()  # within the node only: the fast link

    def round_in_flight(self) -> bool:
        if self.streamer is not None:
            return self.streamer.in_flight()
        return getattr(self, "averager", None) is not None and self.averager.pending is not None

    def replicas_agree_now(self) -> bool:
        """Parameters and buffers alike on every rank (buffers kept per rank never are, until the end)."""
        if self.streamer is not None:
            return self.streamer.all_synced() and self.average_buffers
        return self.steps_since_sync == 0 and not self.round_in_flight() and self.average_buffers

    def overlap_depth(self) -> int:
        """Local steps a round stays in flight: --overlap-steps (or the agreed automatic depth), at most J
        (AdaptiveJ may shrink J). At D = J a round completes at the step the next one begins, just before
        it (Overlap Local-SGD's anchor, Wang et al. 2020): a link slower than J - 1 steps is still hidden."""
        if not self.overlap:
            return 0
        depth = self.auto_depth.depth if self.auto_depth is not None else self.overlap_steps
        return max(0, min(depth, self.local_steps))

    def record_step_time(self) -> None:
        if self.auto_depth is not None and self.step_ended is not None:
            self.auto_depth.record_step(time.perf_counter() - self.step_ended)

    def depth_proposal(self) -> Optional[float]:
        """The element an overlapped round carries under --overlap-steps auto: rank 0's proposed depth,
        0 from the others, so its sum is rank 0's proposal everywhere (see overlap_depth.py)."""
        if self.auto_depth is None:
            return None
        return float(self.auto_depth.proposal()) if dist.get_rank() == 0 else 0.0

    def round_completed(self, averager: Averager, steps_in_flight: int, control: Optional[float]) -> None:
        if self.auto_depth is not None and control is not None:
            self.auto_depth.record_round(steps_in_flight, averager.done_after, averager.waited)
            self.auto_depth.adopt(control)

    def after_epoch(self, epoch: int, metrics: dict) -> dict:
        figures = {"fragments": self.fragments_in_use()} if is_distributed() else {}
        return {**figures, "overlap_steps": self.overlap_depth()} if self.overlap else figures

    def synchronize(self, blocking: bool = False) -> None:
        """One averaging round across all ranks: parameters (+ buffers) in one all-reduce, then the
        momentum rule; with --overlap it completes one local step later."""
        self.steps_since_sync = 0
        if not is_distributed():
            return
        self.meter.count_round()
        overlapping = self.overlap_depth() > 0 and not blocking
        self.averager.begin(overlapping, self.depth_proposal() if overlapping else None)
        if not overlapping:
            self.complete_round()

    def complete_round(self) -> None:
        control = self.averager.complete(self.after_average)
        self.round_completed(self.averager, self.steps_since_sync, control)

    def after_average(self, fragment=None) -> None:
        """What follows the averaging itself (SlowMo's outer step; the momentum rule), for the whole
        state or for one streamed fragment (fragments keep momentum local: check_fragments)."""
        if fragment is None:
            self.apply_momentum_rule()

    def restart_reduced_precision(self) -> None:
        """Make the current (agreed) parameters the reference of later reduced-precision changes."""
        if self.streamer is not None:
            self.streamer.restart_from_current()
        elif getattr(self, "averager", None) is not None:
            self.averager.restart_from_current()

    def apply_momentum_rule(self) -> None:
        if self.momentum_sync == "local":
            return  # each rank keeps its own momentum (Lin et al. 2020 do the same)
        buffers = [
            state[key]
            for state in self.optimizer.state.values()
            for key in _MOMENTUM_KEYS
            if isinstance(state.get(key), torch.Tensor)
        ]
        if self.momentum_sync == "reset":
            for buffer in buffers:
                buffer.zero_()
            for state in self.optimizer.state.values():  # Adam's bias correction starts over with its moments
                if "step" in state:
                    state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0
        elif buffers:
            FlatBuffer(buffers).average(self.meter)

    def settle(self) -> None:
        if self.streamer is not None:
            self.streamer.settle()
        elif self.round_in_flight():
            self.complete_round()  # nothing in flight across an epoch boundary (evaluation, checkpoints)

    @contextlib.contextmanager
    def eval_model(self):
        """Between syncs the replicas differ: evaluate their average, on a copy, so training is unchanged."""
        if self.replicas_agree_now() or not is_distributed():
            yield self.model
            return
        yield averaged_copy(self.model)

    def finish(self) -> None:
        self.settle()
        if self.streamer is not None:
            self.streamer.synchronize_rest()
        elif self.steps_since_sync:
            self.synchronize(blocking=True)
        buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        if not self.average_buffers and buffers and is_distributed():
            self.meter.count_round()  # statistics kept per rank during training: one model at the end
            FlatBuffer(buffers).average(self.meter)

    def state_dict(self) -> dict:
        state = {"steps_since_sync": self.steps_since_sync, "local_steps": self.local_steps, "steps": self.steps}
        if getattr(self, "averager", None) is not None:
            state["averager"] = self.averager.state_dict()
        if self.streamer is not None:
            state["fragments"] = self.streamer.state_dict()
        if self.auto_depth is not None:
            state["auto_depth"] = self.auto_depth.state_dict()
        return state

    def fragments_in_use(self) -> int:
        return len(self.streamer.fragments) if self.streamer is not None else 1

    def load_state_dict(self, state: dict) -> None:
        saved = len(state["fragments"]["fragments"]) if "fragments" in state else 1
        if saved != self.fragments_in_use():  # its rounds (some maybe in flight) belong to the other layout
            raise CheckpointError(
                f"the checkpoint averages the state in {saved} fragment(s), this run in {self.fragments_in_use()} "
                f"(--fragments auto streams min(J, 8) with --overlap, 1 without); resume with --fragments {saved}"
            )
        self.steps_since_sync, self.local_steps, self.steps = (
            state["steps_since_sync"],
            state["local_steps"],
            state["steps"],
        )
        if "averager" in state and getattr(self, "averager", None) is not None:
            self.averager.load_state_dict(state["averager"])
        if self.streamer is not None:
            self.streamer.load_state_dict(state["fragments"])
        if self.auto_depth is not None and "auto_depth" in state:
            self.auto_depth.load_state_dict(state["auto_depth"])
