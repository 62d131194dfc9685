"""Train a network on many ranks while talking as little as possible.

    python main.py --training-type MBSGD --dataset synthetic --model lenet5w          # one process
    torchrun --nproc_per_node=2 main.py --training-type PLSGD --local-steps 8 ...    # 2 ranks, one node
    srun python main.py ...            # SLURM: one rank per task
    mpiexec -n 2 python main.py ...    # MPI (mpi4py)

Reads top to bottom: config -> distributed start -> data, model, optimizer -> train -> outputs.
Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys

import torch

from dataloaders import DataError, build_data
from models import apply_ghost_batch_norm, build_model
from train.loop import LoopSettings, ReplicasDiffer, Trainer
from train.sync.base import TrainingDiverged
from train.optimizers import build_optimizer
from train.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatch
from train.schedules import Schedule, default_warmup_start, scaled_lr
from train.sync import SYNC_TYPES, RunShape, build_sync
from train.sync.hogwild_watch import WorkerFailed
from utilities import distributed
from utilities.checkpoint import CheckpointError, remove_orphan_temporaries
from utilities.config import Config, ConfigError, parse_config
from utilities import error_report
from utilities.config_checks import unusable_output_dir
from utilities.lppsgd_results import timestamped_run_dir, write_results
from utilities.resume import resume_state
from utilities.run_files import RunFiles, code_version, holds_a_run
from utilities.run_lock import hold_output_folder, release_output_folder
from utilities.run_settings import change_history, check_resume_settings, load_with_changes, run_identity


def set_threads(launch: distributed.LaunchInfo) -> None:
    """Share the cores among the ranks of this node instead of each rank taking all of them."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0]
                     or 0) or launch.world_size
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks_here))


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    # cuDNN times its convolution algorithms on the first batch of each shape and keeps the fastest
    # (shapes are fixed here); the pick can differ between runs, so not under --deterministic.
    torch.backends.cudnn.benchmark = not deterministic


def check_output_dir(config: Config, directory: str) -> None:
    """Refuse to mix two runs in one folder; runs before any rank writes anything."""
    if config.resume and config.overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite deletes it; pass only one")
    problem = unusable_output_dir(directory)
    if problem:
        raise ConfigError(problem)
    if holds_a_run(directory) and not config.resume and not config.overwrite:
        raise ConfigError(f"{directory} holds another run; pass --resume auto to continue it, --overwrite to "
                          f"replace it, or choose another --output-dir")


def build_schedule(config: Config, optimizer, steps_per_epoch: int, total_steps: int, world_size: int):
    global_batch = config.batch_size * world_size
    peak_lr = scaled_lr(config.lr, global_batch, config.reference_batch, config.lr_scaling)
    warmup_start = config.warmup_start_lr
    if warmup_start is None:
        warmup_start = default_warmup_start(config.lr, peak_lr)
    schedule = Schedule(peak_lr=peak_lr, total_steps=total_steps,
                        warmup_steps=round(config.warmup_epochs * steps_per_epoch), warmup_start_lr=warmup_start,
                        kind=config.lr_schedule, milestone_steps=tuple(m * steps_per_epoch for m in config.milestones),
                        gamma=config.gamma)
    return schedule, peak_lr


@contextlib.contextmanager
def settings_checked_by_constructors():
    """Constructors check their arguments with ValueError naming them: here that is bad input."""
    try:
        yield
    except ValueError as error:
        raise ConfigError(str(error)) from None


def clear_run(output_dir: str) -> None:
    """--overwrite: remove the previous run's outputs (only once the new run has started cleanly)."""
    for name in ("metrics.jsonl", "summary.json", "checkpoints", "model.pt", "tensorboard"):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def train(config: Config) -> None:
    worker_types = "/".join(name for name, sync_class in SYNC_TYPES.items() if sync_class.trains_in_workers)
    if config.training_type not in SYNC_TYPES:
        raise ConfigError(f"--training-type {config.training_type} is not available; choose one of: "
                          f"{', '.join(SYNC_TYPES)}")
    if config.dirichlet_alpha and SYNC_TYPES[config.training_type].trains_in_workers:
        raise ConfigError(f"--dirichlet-alpha (non-iid shards) is not available for {worker_types}; use iid shards")
    if config.amp != "off" and SYNC_TYPES[config.training_type].trains_in_workers:
        raise ConfigError(f"--amp is not available for {worker_types} (their workers train in fp32); use --amp off")
    if config.workers_per_node > 1 and not SYNC_TYPES[config.training_type].trains_in_workers:
        raise ConfigError(f"--workers-per-node is for --training-type {worker_types.replace('/', ' or ')}")
    preemption = PreemptionWatch().install()  # before the slow start-up, so an early signal is not lost
    launch = distributed.detect_launch()
    device = distributed.pick_device(config.device, launch.local_rank)
    backend = distributed.pick_backend(config.backend, device)
    output_dir = config.resolved_output_dir()
    if not config.timestamped_output_dir:  # a timestamped folder is new (or, with --resume, the newest run)
        check_output_dir(config, output_dir)
    set_threads(launch)
    distributed.init_distributed(launch, backend, config.timeout, config.dist_url)
    if config.timestamped_output_dir:
        output_dir = timestamped_run_dir(output_dir, config.resume, device)
    hold_output_folder(output_dir, launch.rank)  # released in main(), or by the kernel when this process dies
    error_report.inputs_being_checked()
    is_main = launch.rank == 0
    seed_everything(config.seed, config.deterministic)

    data = build_data(config.dataset, config.data_dir, config.download, config.synthetic_size, config.test_ratio,
                      config.val_ratio, config.batch_size, config.eval_batch_size, config.augment, config.seed,
                      launch.rank, launch.world_size, device, config.dirichlet_alpha,
                      imagenet_dir=config.imagenet_dir, image_size=config.image_size,
                      loader_workers=config.loader_workers, local_rank=launch.local_rank,
                      workers_per_rank=config.workers_per_node, wait_seconds=config.timeout)
    if config.num_classes is not None and config.num_classes != data.num_classes:
        raise ConfigError(f"--num-classes {config.num_classes} does not match {config.dataset}, which has "
                          f"{data.num_classes} classes")
    steps_per_epoch = data.train.steps_per_epoch
    epochs, max_steps = config.epochs, config.max_steps
    if config.total_steps:  # fixed iteration budget, as the LocalSGD studies compare K and J
        epochs, max_steps = math.ceil(config.total_steps / steps_per_epoch), config.total_steps
    total_steps = min(epochs * steps_per_epoch, max_steps or epochs * steps_per_epoch)
    micro_batches = max(config.accumulation_steps, math.ceil(config.batch_size / config.max_micro_batch))

    with settings_checked_by_constructors():
        model = build_model(config.model, data.channels, data.image_size, data.num_classes).to(device)
        if config.ghost_batch_size:
            apply_ghost_batch_norm(model, config.ghost_batch_size)
        optimizer = build_optimizer(config.optimizer, model.parameters(), lr=config.lr, momentum=config.momentum,
                                    nesterov=config.nesterov, weight_decay=config.weight_decay,
                                    trust_coefficient=config.trust_coefficient,
                                    exclude_bias_and_norm=config.lars_exclude_bias_norm)
        schedule, peak_lr = build_schedule(config, optimizer, steps_per_epoch, total_steps, launch.world_size)
        scheduler = schedule.scheduler(optimizer)
        meter = distributed.CommMeter()
        sync = build_sync(config.training_type, config, meter,
                          RunShape(micro_batches, steps_per_epoch, epochs, schedule, max_steps))
    error_report.inputs_checked()  # every rank's inputs passed, or every rank stops here with code 2

    settings = LoopSettings(epochs=epochs, max_steps=max_steps, micro_batches=micro_batches,
                            eval_every=config.eval_every, log_every=config.log_every,
                            keep_checkpoints=config.keep_checkpoints, epochs_per_job=config.epochs_per_job,
                            on_nan=config.on_nan, check_replicas=config.check_replicas, amp=config.amp)
    files = RunFiles(output_dir, enabled=is_main, tensorboard=config.tensorboard)
    trainer = Trainer(model, optimizer, scheduler, sync, data, files, settings, meter, device, launch.rank)
    trainer.preemption = preemption
    trainer.identity = run_identity(config.to_dict(), launch.world_size)
    state = resume_state(config.resume, files.checkpoints, launch.rank, device)
    changes = {} if state is None else check_resume_settings(state.get("identity") or {}, trainer.identity,
                                                              config.allow_config_change)
    # Only now, with every input checked (data loaded, model built, checkpoint verified), is anything in the
    # output folder changed.
    if is_main and config.overwrite:
        clear_run(output_dir)
    if is_main:
        remove_orphan_temporaries(output_dir)
        remove_orphan_temporaries(files.checkpoints)
    if state is not None:
        load_with_changes(trainer, state, changes, schedule)
    files.restore_metrics(trainer.progress.rows)
    history = change_history(files.path("config.yaml"), trainer.progress.epoch, changes)
    files.write_config(config.to_dict(), {"run": {
        "code_version": code_version(), "torch_version": str(torch.__version__), "launcher": launch.launcher,
        "world_size": launch.world_size, "backend": backend if launch.world_size > 1 else "none",
        "device": str(device), "global_batch": config.batch_size * launch.world_size, "peak_lr": peak_lr,
        "steps_per_epoch": steps_per_epoch, "micro_batches": micro_batches, "train_size": data.train_size,
        "resumed_from_epoch": trainer.progress.epoch}, **({"config_changes": history} if history else {})})
    if is_main:
        print(f"{config.training_type} on {launch.world_size} rank(s) via {launch.launcher} ({backend}, {device}): "
              f"{config.model} on {config.dataset}, {epochs} epochs x {steps_per_epoch} steps, "
              f"global batch {config.batch_size * launch.world_size}, peak lr {peak_lr:.4g}"
              + (f", resuming after epoch {trainer.progress.epoch}" if state is not None else "")
              + (f" step {trainer.progress.step} (mid-epoch)" if trainer.progress.epoch_partial else ""),
              file=sys.stderr)

    try:
        summary = trainer.run()
    except Preempted:
        files.close()
        raise
    if config.store_results and is_main:
        write_results(output_dir, trainer.progress.rows, config, launch.world_size)
    if summary is None:
        if is_main:
            print(f"stopped after epoch {trainer.progress.epoch} (--epochs-per-job); continue with --resume auto",
                  file=sys.stderr)
    else:
        summary["training_type"] = config.training_type
        files.write_summary(summary)
        files.save_model(model.state_dict())
        if is_main:
            print(f"done: test accuracy {summary['final_test_accuracy']:.4f}, {summary['comm_rounds']} rounds, "
                  f"{summary['comm_bytes'] / 1e6:.1f} MB sent per rank; outputs in {output_dir}", file=sys.stderr)
    files.close()
    if distributed.is_distributed():
        # Every rank leaves together: tearing Gloo down while a peer still talks can abort the process.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(argv=None) -> int:
    try:
        config = parse_config(argv)
        train(config)
    except (ConfigError, DataError, CheckpointError, distributed.LaunchError) as error:
        if error_report.prints_the_line(error):
            print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if not error_report.is_disk_full(error):
            raise
        print(f"error: {error_report.disk_full_message(error)}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return 3
    except ReplicasDiffer as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    except Preempted as stop:
        if not distributed.is_distributed() or torch.distributed.get_rank() == 0:
            print(str(stop), file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except WorkerFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (torch.distributed.DistError, RuntimeError) as error:
        if not distributed.is_distributed() or not distributed.is_communication_failure(error):
            raise  # a real bug, whose traceback is worth reading
        print(f"error: rank {torch.distributed.get_rank()} lost contact with the other ranks (one died, timed out "
              f"after --timeout, or the network failed): {str(error).splitlines()[0][:300]}", file=sys.stderr)
        return 1
    finally:
        release_output_folder()
    return 0


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and the process group is gone; skip interpreter teardown, where a
    # communication thread destroyed late can abort the process after a successful run.
    os._exit(exit_code)
