"""Start-up of a run: threads and seeds, the output folder, and where training resumes from."""

from __future__ import annotations

import os
import shutil

import torch

from utilities.checkpoint import remove_orphan_temporaries
from utilities.config import Config, ConfigError
from utilities.config_checks import unusable_output_dir
from utilities.distributed import LaunchInfo
from utilities.run_files import holds_a_run

RUN_OUTPUTS = ("metrics.jsonl", "summary.json", "checkpoints", "model.pt", "tensorboard")


def set_threads(launch: LaunchInfo) -> None:
    """Share the cores among the ranks of this node instead of each rank taking all of them."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    ranks_here = (
        int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0)
        or launch.world_size
    )
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
        raise ConfigError(
            f"{directory} holds another run; pass --resume auto to continue it, --overwrite to "
            f"replace it, or choose another --output-dir"
        )


def clear_for_new_run(output_dir: str, checkpoints: str, overwrite: bool) -> None:
    """Rank 0, once every input has been checked (data loaded, model built, checkpoint verified): --overwrite
    removes the previous run's outputs; temporaries of killed writers are removed in any case."""
    if overwrite:
        for name in RUN_OUTPUTS:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    remove_orphan_temporaries(output_dir)
    remove_orphan_temporaries(checkpoints)
