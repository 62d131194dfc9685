"""The interface every training type implements; the loop calls these hooks and nothing else.

The loop never asks which training type it runs: MBSGD, local SGD, SlowMo and the
others differ only in when and how the ranks agree, which lives behind these hooks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from utilities.distributed import CommMeter


class TrainingDiverged(RuntimeError):
    """The loss (or, after an averaging round, the agreed model) became NaN or infinite."""


@dataclass(frozen=True)
class RunShape:
    """The few facts about the run a sync object may need besides its own settings."""

    micro_batches: int = 1  # backward passes per optimizer step
    steps_per_epoch: int = 1
    epochs: int = 1
    schedule: Optional[object] = None  # train.schedules.Schedule: the LR as a function of the step
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)


class Sync:
    """No communication: the behaviour of one process, and the base of every training type."""

    # The config fields this type reads, passed to the constructor as keyword arguments of the same
    # names; a type-specific field set for a type that does not list it is reported (train.sync.options).
    OPTIONS: tuple = ()
    # Fields this type cannot honour: setting one is an error, not a warning (it would change the meaning).
    REFUSED_OPTIONS: tuple = ("workers_per_node",)  # worker processes exist only where a type trains in them
    refusal_hint = "worker processes are for LAPSGD and LPPSGD"  # why, and what to do, for a refused field
    # True when the training happens in worker processes sharing the model (no per-rank data hooks, fp32).
    trains_in_workers = False
    # Inner optimizer and LR this type defaults to when --optimizer is not given (None: the config's).
    default_optimizer: Optional[tuple] = None

    def __init__(self, meter: CommMeter):
        self.meter = meter

    @classmethod
    def settings(cls, config, shape: RunShape) -> dict:
        """The constructor's keyword arguments, read from the config (types that derive one override this)."""
        return {name: getattr(config, name) for name in cls.OPTIONS}

    @classmethod
    def from_config(cls, config, meter: CommMeter, shape: RunShape) -> "Sync":
        return cls(meter, **cls.settings(config, shape))

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.nn.Module:
        """Wrap or snapshot what this method needs; return the module the loop trains."""
        self.model, self.optimizer = model, optimizer
        return model

    def train_epoch(self, epoch: int, batches, device: torch.device) -> Optional[dict]:
        """Train one epoch some other way (e.g. in worker processes, on ``batches``, the rank's shard) and
        return its figures, with ``step`` the optimizer steps taken so far; None lets the loop train it."""
        return None

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Context for a backward pass that is not the last of an accumulated step."""
        return contextlib.nullcontext()

    def before_step(self, step: int) -> None:
        """After the gradients of optimizer step ``step`` (0-based) exist, before the update."""

    def gradients_shared(self, step: int) -> bool:
        """True when every rank holds the same (averaged) gradients at ``step``: a decision taken on
        them (skip or stop on a non-finite value) is then the same on every rank without a word."""
        return False

    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (0-based): communicate when it is time."""

    def settle(self) -> None:
        """Complete whatever is still in flight, so the model evaluated and checkpointed after an
        epoch is the one the ranks agreed on."""

    def after_epoch(self, epoch: int, metrics: dict) -> dict:
        """React to an epoch's reduced metrics; return extra figures to log (e.g. the current J)."""
        return {}

    def replicas_agree_now(self) -> bool:
        """True right after a step that left every rank with the same parameters (--check-replicas)."""
        return False

    def fragments_in_use(self) -> int:
        """How many pieces a round averages (--fragments, resolved after ``prepare``); a checkpoint is
        resumed only into the same count."""
        return 1

    @contextlib.contextmanager
    def eval_model(self):
        """The model every rank evaluates; identical on all ranks."""
        yield self.model

    def finish(self) -> None:
        """Final agreement, so every rank ends with the same model."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
