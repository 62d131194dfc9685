"""Local SGD (PLSGD) and post-local SGD.

PLSGD: every rank takes J optimizer steps on its own shard, then the parameters (and
BatchNorm statistics) are averaged with one all-reduce over a flat buffer (Stich 2019;
Lin et al. 2020). Averaging happens in ``after_step``, after the optimizer has stepped,
never inside ``optimizer.step``: every rank makes the same steps, so the same collectives.

PostLocalSGD (Lin et al. 2020, "Don't use large mini-batches, use local SGD", sec. 3):
mini-batch SGD (gradients averaged every step) until the switch point, local SGD after.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import torch.distributed as dist

from train.sync.base import RunShape, Sync
from train.sync.averaging import Averager
from utilities.distributed import CommMeter, all_reduce_mean, is_distributed, world_size
from utilities.flat_buffer import FlatBuffer, averaged_copy, floating_state

MOMENTUM_SYNC = ("local", "reset", "average")
_MOMENTUM_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


def broadcast_from_rank0(module: torch.nn.Module) -> None:
    """Start every rank from rank 0's model (setup, not counted as training traffic)."""
    if is_distributed():
        buffer = FlatBuffer(floating_state(module, include_buffers=True))
        dist.broadcast(buffer.gather(), src=0)
        buffer.scatter()


AVERAGING_OPTIONS = ("overlap", "overlap_steps", "sync_dtype", "hierarchy", "ranks_per_node")


class PLSGD(Sync):
    OPTIONS = ("local_steps", "average_buffers", "momentum_sync", *AVERAGING_OPTIONS)

    def __init__(self, meter: CommMeter, local_steps: int, average_buffers: bool = True,
                 momentum_sync: str = "local", overlap: bool = False, sync_dtype: str = "fp32",
                 hierarchy: Optional[tuple] = None, ranks_per_node: int = 0, overlap_steps: int = 1):
        super().__init__(meter)
        if local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, got {local_steps}")
        if momentum_sync not in MOMENTUM_SYNC:
            raise ValueError(f"momentum_sync must be one of {MOMENTUM_SYNC}, got {momentum_sync!r}")
        if hierarchy is not None:
            node_steps, global_steps = hierarchy
            if not 1 <= node_steps <= global_steps or global_steps % node_steps:
                raise ValueError(f"hierarchy needs 1 <= J_node <= J_global with J_global a multiple of J_node, "
                                 f"got {hierarchy}")
            if overlap or sync_dtype != "fp32":
                raise ValueError("hierarchy cannot be combined with overlap or a reduced sync_dtype")
            local_steps = global_steps
        if overlap and not 1 <= overlap_steps < local_steps:
            raise ValueError(f"overlap_steps must be at least 1 and below local_steps ({local_steps}), got {overlap_steps}")
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
        if is_distributed():
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
        self.steps_since_sync += 1
        if self.round_in_flight() and self.steps_since_sync >= self.overlap_depth():
            self.complete_round()  # the all-reduce begun --overlap-steps local steps ago
        if self.steps_since_sync >= self.local_steps:
            self.synchronize()
        elif self.hierarchy is not None and self.steps % self.hierarchy[0] == 0 and is_distributed():
            self.meter.count_round()
            self.node_averager.average()  # within the node only: the fast link

    def round_in_flight(self) -> bool:
        return getattr(self, "averager", None) is not None and self.averager.pending is not None

    def replicas_agree_now(self) -> bool:
        """Parameters and buffers alike on every rank (buffers kept per rank never are, until the end)."""
        return self.steps_since_sync == 0 and not self.round_in_flight() and self.average_buffers

    def overlap_depth(self) -> int:
        """Local steps a round stays in flight: --overlap-steps, below J (AdaptiveJ may shrink J)."""
        return min(self.overlap_steps, self.local_steps - 1) if self.overlap else 0

    def synchronize(self, blocking: bool = False) -> None:
        """One averaging round across all ranks: parameters (+ buffers) in one all-reduce, then the
        momentum rule; with --overlap it completes one local step later."""
        self.steps_since_sync = 0
        if not is_distributed():
            return
        self.meter.count_round()
        overlapping = self.overlap_depth() > 0 and not blocking
        self.averager.begin(overlapping)
        if not overlapping:
            self.complete_round()

    def complete_round(self) -> None:
        self.averager.complete(self.after_average)

    def after_average(self) -> None:
        """What follows the averaging itself (SlowMo's outer step; the momentum rule)."""
        self.apply_momentum_rule()

    def apply_momentum_rule(self) -> None:
        if self.momentum_sync == "local":
            return  # each rank keeps its own momentum (Lin et al. 2020 do the same)
        buffers = [state[key] for state in self.optimizer.state.values() for key in _MOMENTUM_KEYS
                   if isinstance(state.get(key), torch.Tensor)]
        if self.momentum_sync == "reset":
            for buffer in buffers:
                buffer.zero_()
            for state in self.optimizer.state.values():  # Adam's bias correction starts over with its moments
                if "step" in state:
                    state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0
        elif buffers:
            FlatBuffer(buffers).average(self.meter)

    def settle(self) -> None:
        if self.round_in_flight():
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
        if self.steps_since_sync:
            self.synchronize(blocking=True)
        buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        if not self.average_buffers and buffers and is_distributed():
            self.meter.count_round()  # statistics kept per rank during training: one model at the end
            FlatBuffer(buffers).average(self.meter)

    def state_dict(self) -> dict:
        state = {"steps_since_sync": self.steps_since_sync, "local_steps": self.local_steps, "steps": self.steps}
        if getattr(self, "averager", None) is not None:
            state["averager"] = self.averager.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps_since_sync, self.local_steps, self.steps = state["steps_since_sync"], state["local_steps"], state["steps"]
        if "averager" in state and getattr(self, "averager", None) is not None:
            self.averager.load_state_dict(state["averager"])


def averaging_options(config) -> dict:
    """The averaging settings every local method shares."""
    hierarchy = tuple(config.hierarchy) if config.hierarchy else None
    ranks_per_node = config.ranks_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or int(
        os.environ.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0)
    if hierarchy is not None and ranks_per_node < 1:
        raise ValueError("--hierarchy needs to know which ranks share a node: pass --ranks-per-node")
    if hierarchy is not None and is_distributed() and world_size() % ranks_per_node:  # before any collective
        raise ValueError(f"--hierarchy: {world_size()} ranks do not split into nodes of {ranks_per_node} "
                         f"(--ranks-per-node); give a divisor of the number of ranks")
    return {"overlap": config.overlap, "sync_dtype": config.sync_dtype, "hierarchy": hierarchy,
            "ranks_per_node": ranks_per_node, "overlap_steps": config.overlap_steps}


class PostLocalSGD(PLSGD):
    OPTIONS = (*PLSGD.OPTIONS, "switch_epoch", "switch_step")

    def __init__(self, meter: CommMeter, local_steps: int, switch_step: int, average_buffers: bool = True,
                 momentum_sync: str = "local", **averaging):
        super().__init__(meter, local_steps, average_buffers, momentum_sync, **averaging)
        if switch_step < 0:
            raise ValueError(f"switch_step must not be negative, got {switch_step}")
        self.switch_step = switch_step

    @classmethod
    def settings(cls, config, shape: RunShape) -> dict:
        settings = super().settings(config, shape)
        switch_epoch = settings.pop("switch_epoch")
        if switch_epoch >= 0:
            settings["switch_step"] = switch_epoch * shape.steps_per_epoch
        elif settings["switch_step"] < 0:
            raise ValueError("PostLocalSGD needs --switch-epoch or --switch-step")
        return settings

    def before_step(self, step: int) -> None:
        if step >= self.switch_step or not is_distributed():
            return
        # Phase 1 is mini-batch SGD: average the gradients, one all-reduce per step.
        # Built each step: the optimizer may replace the .grad tensors (zero_grad(set_to_none=True)).
        gradients = FlatBuffer([p.grad for p in self.model.parameters() if p.grad is not None])
        self.meter.count_round()
        all_reduce_mean(gradients.gather(), self.meter)
        gradients.scatter()

    def gradients_shared(self, step: int) -> bool:
        return step < self.switch_step and is_distributed()

    def after_step(self, step: int) -> None:
        if step < self.switch_step:
            # Gradients were averaged, so parameters agree; BatchNorm statistics still need it.
            if self.phase_one_buffers is not None:
                self.phase_one_buffers.average(self.meter)
            if step + 1 == self.switch_step and getattr(self, "averager", None) is not None:
                self.averager.restart_from_current()  # reduced-precision changes count from the switch
            return
        super().after_step(step)

    def prepare(self, model, optimizer):
        model = super().prepare(model, optimizer)
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.phase_one_buffers = FlatBuffer(buffers) if buffers and self.average_buffers and is_distributed() else None
        return model
