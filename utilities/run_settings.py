"""The settings that define what a run computes, checked when a run is resumed.

Every checkpoint records them (as the trainer's ``identity``). Resuming with another model, data set,
training type or world size is impossible (the states do not fit); resuming with another batch size,
J, LR, schedule, optimizer, seed, ... would silently mix two runs, so it is refused unless the user
passes --allow-config-change; then the new settings take effect and config.yaml records what changed
from which epoch. Only the run's length (epochs, steps) may change without asking, to extend a run.
"""

from __future__ import annotations

import os

import yaml

from train.run_state import load_checkpoint_state
from utilities.checkpoint import CheckpointError
from utilities.config import ConfigError

# A checkpoint that differs in one of these cannot be loaded into this run at all.
INCOMPATIBLE = ("training_type", "model", "dataset", "world_size")
# How long to train: a finished or stopped run may be extended without --allow-config-change (the change is
# still recorded in config.yaml).
LENGTH = ("epochs", "max_steps", "total_steps")
# Where files are, how progress is shown, how fast or on what device: none changes what is computed.
# (Micro-batching only splits a batch to fit memory.) Every other setting is compared.
OPERATIONAL = frozenset(
    {
        "data_dir",
        "download",
        "output_dir",
        "resume",
        "overwrite",
        "keep_checkpoints",
        "epochs_per_job",
        "check_replicas",
        "log_every",
        "tensorboard",
        "device",
        "backend",
        "dist_url",
        "timeout",
        "comm_thread_policy",
        "eval_batch_size",
        "max_micro_batch",
        "accumulation_steps",
        "deterministic",
        "num_classes",
        "allow_config_change",
    }
)


def run_identity(settings: dict, world_size: int) -> dict:
    """What a checkpoint of this run records and a resumed run must match (``settings``: Config.to_dict())."""
    identity = {name: value for name, value in settings.items() if name not in OPERATIONAL}
    if settings.get("dataset") == "npy":  # there the folder is the data set itself
        identity["data_dir"] = settings["data_dir"]
    identity["world_size"] = world_size
    return identity


def describe(changes: dict) -> str:
    return ", ".join(f"{name.replace('_', '-')} {old!r} -> {new!r}" for name, (old, new) in changes.items())


def check_resume_settings(saved: dict, current: dict, allow_change: bool) -> dict:
    """The {setting: (checkpoint's, new)} changes allowed for this resume; raise for the others.
    Settings a checkpoint predates (absent from ``saved``) are not compared."""
    changes = {name: (saved[name], value) for name, value in current.items() if name in saved and saved[name] != value}
    incompatible = {name: change for name, change in changes.items() if name in INCOMPATIBLE}
    if incompatible:
        raise CheckpointError(
            f"the checkpoint belongs to another run ({describe(incompatible)}); it cannot be "
            f"resumed with these settings; choose another --output-dir or --resume path"
        )
    refused = {name: change for name, change in changes.items() if name not in LENGTH}
    if refused and not allow_change:
        raise ConfigError(
            f"resuming with other settings would mix two runs: {describe(refused)}; use the "
            f"checkpoint's settings, or pass --allow-config-change to continue with the new ones"
        )
    return changes


def load_with_changes(trainer, state: dict, changes: dict, schedule) -> None:
    """Load ``state`` into ``trainer``, then let the changed settings take effect: the newly built optimizer's
    hyperparameters, LR schedule and J replace the checkpoint's (which loading the state would restore)."""
    optimizer, sync = trainer.optimizer, trainer.sync
    fresh_groups = [
        {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")} for group in optimizer.param_groups
    ]
    fresh_sync = sync.state_dict()
    if "optimizer" in changes:  # another optimizer's state (e.g. SGD momentum for AdamW) does not apply
        state["optimizer"] = optimizer.state_dict()
    if "local_steps" in changes and "local_steps" in fresh_sync and "controller" not in fresh_sync:
        state["sync"]["local_steps"] = fresh_sync["local_steps"]
    load_checkpoint_state(trainer, state)
    if not changes:
        return
    lr = schedule.lr_at(trainer.progress.step)
    for group, fresh in zip(optimizer.param_groups, fresh_groups):
        group.update(fresh, lr=lr, initial_lr=schedule.peak_lr)
    trainer.scheduler.base_lrs = [schedule.peak_lr] * len(optimizer.param_groups)
    trainer.scheduler._last_lr = [lr] * len(optimizer.param_groups)


def change_history(config_file: str, resumed_epoch: int, changes: dict) -> list:
    """config.yaml's record of setting changes: earlier ones still in effect, plus this resume's."""
    history = []
    if os.path.exists(config_file):
        try:
            with open(config_file) as handle:
                history = (yaml.safe_load(handle) or {}).get("config_changes") or []
        except (OSError, yaml.YAMLError, AttributeError):
            history = []
    history = [entry for entry in history if isinstance(entry, dict) and entry.get("from_epoch", 0) <= resumed_epoch]
    if changes:
        history.append(
            {
                "from_epoch": resumed_epoch + 1,
                "changes": {name: {"from": old, "to": new} for name, (old, new) in changes.items()},
            }
        )
    return history
