"""Helpers for tests that start real ranks: torchrun/python runs of main.py, and spawned Gloo groups."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tools.launch import child_environment, free_port, main_command  # noqa: F401 (free_port: for tests)
from utilities.distributed import replicas_identical

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))
LEARN_ARGS = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "4000",
    "--model",
    "mlp",
    "--batch-size",
    "32",
    "--epochs",
    "2",
    "--log-every",
    "1000",
]
TINY = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "2000",
    "--model",
    "lenet5",
    "--batch-size",
    "32",
    "--epochs",
    "1",
    "--log-every",
    "1000",
]


# Figures that measure time: they differ between two runs that compute the same thing.
TIMING_FIELDS = {
    "images_per_second",
    "train_seconds",
    "wall_seconds",
    "comm_seconds",
    "epoch_comm_seconds",
    "comm_inflight_seconds",
    "compute_seconds",
}


def without_timings(rows: list) -> list:
    """metrics.jsonl rows without their timings, for comparing two runs of the same computation."""
    return [{key: value for key, value in row.items() if key not in TIMING_FIELDS} for row in rows]


def child_env() -> dict:
    return child_environment(OMP_NUM_THREADS="1")


def run_main(args: list, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run main.py in one process, or under torchrun with ``nproc`` ranks on this host."""
    return subprocess.run(
        main_command(nproc, args), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout
    )


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"


def summary(output_dir) -> dict:
    return json.loads((Path(output_dir) / "summary.json").read_text())


def metrics(output_dir) -> list:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def final_model(output_dir) -> dict:
    return torch.load(Path(output_dir) / "model.pt", map_location="cpu")


def max_difference(first: dict, second: dict) -> float:
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


def _rank_entry(rank, world_size, init_file, function, args, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        torch.set_num_threads(1)
        results[rank] = function(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn_ranks(function, world_size: int, *args) -> list:
    """Run ``function(rank, world_size, *args)`` on ``world_size`` real Gloo ranks; return their results."""
    with tempfile.TemporaryDirectory() as folder:
        manager = mp.Manager()
        results = manager.dict()
        mp.spawn(
            _rank_entry,
            args=(world_size, os.path.join(folder, "rendezvous"), function, args, results),
            nprocs=world_size,
            join=True,
        )
        return [results[rank] for rank in range(world_size)]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def train_steps(sync, model, optimizer, rank: int, steps: int, record=None):
    """Run ``steps`` optimizer steps on rank-specific random data, calling the sync hooks like the loop does."""
    generator = torch.Generator().manual_seed(1000 + rank)
    trained = sync.prepare(model, optimizer)
    for step in range(steps):
        inputs = torch.randn(16, 4, generator=generator)
        targets = torch.randint(0, 3, (16,), generator=generator)
        nn.functional.cross_entropy(trained(inputs), targets).backward()
        sync.before_step(step)
        optimizer.step()
        optimizer.zero_grad()
        sync.after_step(step)
        if record is not None:
            record.append(replicas_identical(model))


def find_mpiexec():
    """The mpiexec next to this interpreter (the venv's MPICH) first, so it matches mpi4py."""
    beside_python = Path(sys.executable).parent / "mpiexec"
    return str(beside_python) if beside_python.exists() else shutil.which("mpiexec")
