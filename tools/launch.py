"""The one way tools, benchmarks and tests start main.py: one process, or torchrun with several ranks."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN = str(REPO / "main.py")
# A surrounding torchrun or SLURM step's identity: the runs started here are jobs of their own.
LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main_command(ranks: int, args: list) -> list:
    """``python main.py ARGS`` for one rank; torchrun (as ``python -m torch.distributed.run``) on this host for more."""
    if ranks == 1:
        return [sys.executable, MAIN, *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={ranks}",
        f"--master_port={free_port()}",
        MAIN,
        *args,
    ]


def child_environment(**overrides) -> dict:
    """This process's environment without a launcher's rank variables (a tool started under a launcher must not
    leak its rank into the runs it starts), one thread per rank unless set, unbuffered output."""
    environment = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    environment.update(PYTHONUNBUFFERED="1")
    environment.setdefault("OMP_NUM_THREADS", "1")
    environment.update(overrides)
    return environment
