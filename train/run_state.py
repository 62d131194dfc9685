"""What the loop is told (LoopSettings), where a run stands (Progress), and the state a checkpoint holds."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LoopSettings:
    epochs: int
    max_steps: int = 0  # 0 = no limit
    micro_batches: int = 1
    eval_every: int = 1
    log_every: int = 50
    keep_checkpoints: int = 0  # 0 = keep all
    epochs_per_job: int = 0  # stop (checkpointed, resumable) after this many epochs; 0 = run to the end
    on_nan: str = "stop"  # stop, or skip the step
    check_replicas: bool = False
    amp: str = "off"  # mixed precision of the forward pass and loss: off, bf16 or fp16 (utilities.amp)
    comm_thread_policy: str = "batch"  # scheduling of Gloo's network threads (utilities.comm_threads)


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint."""

    epoch: int = 0  # next epoch to run
    step: int = 0  # optimizer steps taken
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    best_val_accuracy: float = 0.0
    skipped_steps: int = 0  # steps dropped for a non-finite loss (--on-nan skip)
    rows: list = field(default_factory=list)  # metrics.jsonl so far, restored exactly on resume
    # Set only in a mid-epoch (preemption) checkpoint: steps done in epoch ``epoch`` and the tallies of its row.
    epoch_partial: dict = field(default_factory=dict)


def checkpoint_state(trainer) -> dict:
    """Everything an exact resume needs (train.loop.Trainer's state); tensors and plain values only."""
    return {
        "identity": trainer.identity,
        "progress": {
            **vars(trainer.progress),
            "rows": list(trainer.progress.rows),
            "epoch_partial": dict(trainer.progress.epoch_partial),
        },
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "sync": trainer.sync.state_dict(),
        "meter": trainer.meter.state_dict(),
        "amp": trainer.amp.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def load_checkpoint_state(trainer, state: dict) -> None:
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.sync.load_state_dict(state["sync"])
    trainer.meter.load_state_dict(state["meter"])
    trainer.amp.load_state_dict(state.get("amp", {}))
    trainer.progress = Progress(**state["progress"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
