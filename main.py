"""Train a network on many ranks while talking as little as possible.

    python main.py --training-type MBSGD --dataset synthetic --model lenet5w          # one process
    torchrun --nproc_per_node=2 main.py --training-type PLSGD --local-steps 8 ...    # 2 ranks, one node
    srun python main.py ...            # SLURM: one rank per task
    mpiexec -n 2 python main.py ...    # MPI (mpi4py)

Reads top to bottom: config -> distributed start -> data, model, optimizer -> train -> outputs.
Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

# isort: off
from utilities import record_stop_signals  # noqa: F401 (first: it records stop signals during the slow imports below)
# isort: on

import torch

from dataloaders import DataError
from train.build import RunParts, build_parts, check_type_flags
from train.loop import ReplicasDiffer, Trainer
from train.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatch
from train.sync.base import TrainingDiverged
from train.sync.hogwild_watch import WorkerFailed
from utilities import distributed, error_report
from utilities.checkpoint import CheckpointError
from utilities.config import Config, ConfigError, parse_config
from utilities.lppsgd_results import timestamped_run_dir, write_results
from utilities.resume import resume_state
from utilities.run_files import RunFiles, code_version
from utilities.run_lock import hold_output_folder, release_output_folder
from utilities.run_settings import change_history, check_resume_settings, load_with_changes, run_identity
from utilities.run_start import check_output_dir, clear_for_new_run, seed_everything, set_threads


def start_distributed(config: Config) -> tuple:
    """(launch, device, backend, output folder): who we are, the process group joined, the folder ours."""
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
    return launch, device, backend, output_dir


def resume_or_begin(config: Config, trainer: Trainer, parts: RunParts, files: RunFiles) -> tuple:
    """Load the checkpoint to continue from (checked against today's settings), then, with every input
    checked, touch the output folder for the first time. Returns (resumed, settings changed on resume)."""
    state = resume_state(config.resume, files.checkpoints, trainer.rank, trainer.device)
    changes = (
        {}
        if state is None
        else check_resume_settings(state.get("identity") or {}, trainer.identity, config.allow_config_change)
    )
    if trainer.is_main:
        clear_for_new_run(files.directory, files.checkpoints, config.overwrite)
    if state is not None:
        load_with_changes(trainer, state, changes, parts.schedule)
    files.restore_metrics(trainer.progress.rows)
    return state is not None, changes


def write_run_config(
    config: Config,
    trainer: Trainer,
    parts: RunParts,
    files: RunFiles,
    resumed: bool,
    changes: dict,
    launch: distributed.LaunchInfo,
    backend: str,
) -> None:
    history = change_history(files.path("config.yaml"), trainer.progress.epoch, changes)
    files.write_config(
        config.to_dict(),
        {
            "run": {
                "code_version": code_version(),
                "torch_version": str(torch.__version__),
                "launcher": launch.launcher,
                "world_size": launch.world_size,
                "backend": backend if launch.world_size > 1 else "none",
                "device": str(trainer.device),
                "global_batch": config.batch_size * launch.world_size,
                "peak_lr": parts.peak_lr,
                "steps_per_epoch": parts.data.train.steps_per_epoch,
                "micro_batches": parts.settings.micro_batches,
                "train_size": parts.data.train_size,
                "resumed_from_epoch": trainer.progress.epoch,
            },
            **({"config_changes": history} if history else {}),
        },
    )
    if trainer.is_main:
        progress = trainer.progress
        where = (f", resuming after epoch {progress.epoch}" if resumed else "") + (
            f" step {progress.step} (mid-epoch)" if progress.epoch_partial else ""
        )
        print(
            f"{config.training_type} on {launch.world_size} rank(s) via {launch.launcher} ({backend}, "
            f"{trainer.device}): {config.model} on {config.dataset}, {parts.settings.epochs} epochs x "
            f"{parts.data.train.steps_per_epoch} steps, global batch {config.batch_size * launch.world_size}, "
            f"peak lr {parts.peak_lr:.4g}{where}",
            file=sys.stderr,
        )


def write_outputs(config: Config, trainer: Trainer, summary, files: RunFiles, launch: distributed.LaunchInfo) -> None:
    if config.store_results and trainer.is_main:
        write_results(files.directory, trainer.progress.rows, config, launch.world_size)
    if summary is None:
        if trainer.is_main:
            print(
                f"stopped after epoch {trainer.progress.epoch} (--epochs-per-job); continue with --resume auto",
                file=sys.stderr,
            )
        return
    summary["training_type"] = config.training_type
    files.write_summary(summary)
    files.save_model(trainer.model.state_dict())
    if trainer.is_main:
        print(
            f"done: test accuracy {summary['final_test_accuracy']:.4f}, {summary['comm_rounds']} rounds, "
            f"{summary['comm_bytes'] / 1e6:.1f} MB sent per rank; outputs in {files.directory}",
            file=sys.stderr,
        )


def leave_together() -> None:
    """Every rank leaves together: tearing Gloo down while a peer still talks can abort the process."""
    if distributed.is_distributed():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def train(config: Config) -> None:
    check_type_flags(config)
    preemption = PreemptionWatch().install()  # before the slow start-up, so an early signal is not lost
    launch, device, backend, output_dir = start_distributed(config)
    error_report.inputs_being_checked()
    seed_everything(config.seed, config.deterministic)
    parts = build_parts(config, launch, device)
    error_report.inputs_checked()  # every rank's inputs passed, or every rank stops here with code 2

    files = RunFiles(output_dir, enabled=launch.rank == 0, tensorboard=config.tensorboard)
    trainer = Trainer(
        model=parts.model,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        sync=parts.sync,
        data=parts.data,
        files=files,
        settings=parts.settings,
        meter=parts.meter,
        device=device,
        rank=launch.rank,
        identity=run_identity(config.to_dict(), launch.world_size),
        preemption=preemption,
    )
    resumed, changes = resume_or_begin(config, trainer, parts, files)
    write_run_config(config, trainer, parts, files, resumed, changes, launch, backend)
    try:
        summary = trainer.run()
    except Preempted:
        files.close()
        raise
    write_outputs(config, trainer, summary, files, launch)
    files.close()
    leave_together()


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
    except TrainingDiverged as error:  # every rank stops at the same step (train.loop): one of them says so
        if not distributed.is_distributed() or torch.distributed.get_rank() == 0:
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
        print(
            f"error: rank {torch.distributed.get_rank()} lost contact with the other ranks (one died, timed out "
            f"after --timeout, or the network failed): {str(error).splitlines()[0][:300]}",
            file=sys.stderr,
        )
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
