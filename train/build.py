"""Every part of a run, built from the configuration: data, model, optimizer, LR schedule, sync object."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from dataloaders import DATA_SETTINGS, Data, build_data
from models import apply_ghost_batch_norm, build_model
from train.optimizers import build_optimizer
from train.run_state import LoopSettings
from train.schedules import Schedule, default_warmup_start, scaled_lr
from train.sync import SYNC_TYPES, RunShape, Sync, build_sync
from utilities.config import Config, ConfigError
from utilities.distributed import CommMeter, LaunchInfo


@dataclass
class RunParts:
    data: Data
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scheduler: object  # torch.optim.lr_scheduler.LRScheduler driven by ``schedule``
    peak_lr: float
    sync: Sync
    meter: CommMeter
    settings: LoopSettings


def check_type_flags(config: Config) -> None:
    """Flags the chosen training type's way of training excludes (its workers train outside the loop)."""
    in_workers = SYNC_TYPES[config.training_type].trains_in_workers
    worker_types = "/".join(name for name, sync_class in SYNC_TYPES.items() if sync_class.trains_in_workers)
    if config.dirichlet_alpha and in_workers:
        raise ConfigError(f"--dirichlet-alpha (non-iid shards) is not available for {worker_types}; use iid shards")
    if config.amp != "off" and in_workers:
        raise ConfigError(f"--amp is not available for {worker_types} (their workers train in fp32); use --amp off")


@contextlib.contextmanager
def settings_checked_by_constructors():
    """Constructors check their arguments with ValueError naming them: here that is bad input."""
    try:
        yield
    except ValueError as error:
        raise ConfigError(str(error)) from None


def run_length(config: Config, steps_per_epoch: int) -> tuple:
    """(epochs, max_steps, total_steps); --total-steps fixes the iteration budget, as the LocalSGD studies
    compare K and J at equal steps."""
    epochs, max_steps = config.epochs, config.max_steps
    if config.total_steps:
        epochs, max_steps = math.ceil(config.total_steps / steps_per_epoch), config.total_steps
    return epochs, max_steps, min(epochs * steps_per_epoch, max_steps or epochs * steps_per_epoch)


def build_schedule(config: Config, steps_per_epoch: int, total_steps: int, world_size: int) -> tuple:
    """(schedule, peak LR): the LR scaled by the global batch (--lr-scaling), warmup, then the decay."""
    peak_lr = scaled_lr(config.lr, config.batch_size * world_size, config.reference_batch, config.lr_scaling)
    warmup_start = config.warmup_start_lr
    if warmup_start is None:
        warmup_start = default_warmup_start(config.lr, peak_lr)
    schedule = Schedule(
        peak_lr=peak_lr,
        total_steps=total_steps,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        warmup_start_lr=warmup_start,
        kind=config.lr_schedule,
        milestone_steps=tuple(m * steps_per_epoch for m in config.milestones),
        gamma=config.gamma,
    )
    return schedule, peak_lr


def build_parts(config: Config, launch: LaunchInfo, device: torch.device) -> RunParts:
    data = build_data(
        config.dataset,
        **{name: getattr(config, name) for name in DATA_SETTINGS},
        rank=launch.rank,
        world_size=launch.world_size,
        device=device,
        local_rank=launch.local_rank,
        workers_per_rank=config.workers_per_node,
        wait_seconds=config.timeout,
    )
    if config.num_classes is not None and config.num_classes != data.num_classes:
        raise ConfigError(
            f"--num-classes {config.num_classes} does not match {config.dataset}, which has {data.num_classes} classes"
        )
    steps_per_epoch = data.train.steps_per_epoch
    if SYNC_TYPES[config.training_type].trains_in_workers:  # a node step is any worker's step on its part
        workers = config.workers_per_node
        steps_per_epoch = sum(
            data.train.resharded(launch.rank * workers + index, launch.world_size * workers).steps_per_epoch
            for index in range(workers)
        )
    epochs, max_steps, total_steps = run_length(config, steps_per_epoch)
    micro_batches = max(config.accumulation_steps, math.ceil(config.batch_size / config.max_micro_batch))
    with settings_checked_by_constructors():
        model = build_model(config.model, data.channels, data.image_size, data.num_classes).to(device)
        if config.ghost_batch_size:
            apply_ghost_batch_norm(model, config.ghost_batch_size)
        optimizer = build_optimizer(
            config.optimizer,
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            trust_coefficient=config.trust_coefficient,
            exclude_bias_and_norm=config.lars_exclude_bias_norm,
        )
        schedule, peak_lr = build_schedule(config, steps_per_epoch, total_steps, launch.world_size)
        meter = CommMeter()
        sync = build_sync(
            config.training_type, config, meter, RunShape(micro_batches, steps_per_epoch, epochs, schedule, max_steps)
        )
    settings = LoopSettings(
        epochs=epochs,
        max_steps=max_steps,
        micro_batches=micro_batches,
        eval_every=config.eval_every,
        log_every=config.log_every,
        keep_checkpoints=config.keep_checkpoints,
        epochs_per_job=config.epochs_per_job,
        on_nan=config.on_nan,
        check_replicas=config.check_replicas,
        amp=config.amp,
        comm_thread_policy=config.comm_thread_policy,
    )
    return RunParts(data, model, optimizer, schedule, schedule.scheduler(optimizer), peak_lr, sync, meter, settings)
