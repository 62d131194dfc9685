"""What the loop is told (LoopSettings) and where a run stands (Progress, saved in every checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
