"""Who we are (launcher detection), process-group start-up, and counted collectives.

One function, ``detect_launch``, reads the environment of torchrun, SLURM or MPI; the
same ``main.py`` then runs under all of them, or as a single process. Every collective
the training makes goes through a ``CommMeter`` so rounds, bytes and seconds are exact.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


class LaunchError(RuntimeError):
    """The requested device or backend cannot run here; the message says what to use instead."""


@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm", "mpi" or "single"


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[003-005,010],cpu1' -> 'gpu003', 'rack[1-2]-gpu[01-04]' -> 'rack1-gpu01'."""
    host, depth, bracket = [], 0, []
    for char in nodelist.strip():
        if char == "," and depth == 0:
            break
        if char == "[":
            depth, bracket = 1, []
        elif char == "]" and depth:
            depth = 0
            host.append("".join(bracket).split(",")[0].split("-")[0])
        elif depth:
            bracket.append(char)
        else:
            host.append(char)
    if depth or not host:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
    return "".join(host)


_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")


def _mpi_launch(env) -> LaunchInfo:
    from mpi4py import MPI  # imported only under mpirun: it initialises MPI

    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    addr = env.get("MASTER_ADDR") or (MPI.Get_processor_name() if comm.Get_rank() == 0 else None)
    addr = comm.bcast(addr, root=0)
    port = int(env.get("MASTER_PORT", 29500))
    port = comm.bcast(port, root=0)
    return LaunchInfo(comm.Get_rank(), comm.Get_size(), local.Get_rank(), addr, port, "mpi")


def detect_launch(env=None) -> LaunchInfo:
    """Rank, world size and rendezvous address from the launcher that started us."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchInfo(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", 29500)),
            "torchrun",
        )
    # MPI before SLURM: mpiexec inside an allocation starts its ranks through srun, whose SLURM_* then
    # describe the helper step, not the ranks.
    if any(int(env.get(name, "1") or 1) > 1 for name in _MPI_SIZE_VARS):
        return _mpi_launch(env)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        job_id = int(env.get("SLURM_JOB_ID", 0))
        return LaunchInfo(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            int(env.get("MASTER_PORT", 29500 + job_id % 1000)),
            "slurm",
        )
    return LaunchInfo(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 29500)), "single")


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LaunchError(
                "a GPU was asked for (--cuda or --device cuda) but none is visible; remove --cuda "
                "(or --device cuda) to train on the CPU"
            )
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def pick_backend(requested: str, device: torch.device) -> str:
    if requested == "nccl" and device.type != "cuda":
        raise LaunchError("--backend nccl needs a GPU on every rank; use --backend gloo on CPUs")
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return requested


def init_distributed(launch: LaunchInfo, backend: str, timeout_s: float, init_method: str = "") -> None:
    """Join the default process group (skipped for a single process)."""
    if launch.world_size == 1:
        return
    os.environ.setdefault("MASTER_ADDR", launch.master_addr)
    os.environ.setdefault("MASTER_PORT", str(launch.master_port))
    timeout = datetime.timedelta(seconds=timeout_s)
    if not init_method and "TORCHELASTIC_RESTART_COUNT" in os.environ:
        store = _torchrun_store(launch, timeout)
        dist.init_process_group(
            backend=backend, store=store, rank=launch.rank, world_size=launch.world_size, timeout=timeout
        )
        return
    dist.init_process_group(
        backend=backend,
        init_method=init_method or f"tcp://{launch.master_addr}:{launch.master_port}",
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=timeout,
    )


def _torchrun_store(launch: LaunchInfo, timeout: datetime.timedelta):
    """The rendezvous store under torchrun, with keys private to this restart attempt.

    After ``--max-restarts`` brings a job back, the agent's store still holds the addresses
    the dead attempt's ranks published; without a per-attempt prefix the new ranks would
    try to connect to them.
    """
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        launch.master_addr,
        launch.master_port,
        launch.world_size,
        is_master=not agent_serves and launch.rank == 0,
        timeout=timeout,
    )
    return dist.PrefixStore(f"attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


_LINK_FAILURE_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "peer")


def is_communication_failure(error: BaseException) -> bool:
    """A collective failed because another rank or the network went away (Gloo surfaces some of these as
    plain RuntimeErrors raised from a future's callback), rather than because of a bug."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(word in text for word in _LINK_FAILURE_WORDS)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class CommMeter:
    """Counts the training's communication: rounds, collectives, bytes sent per rank, seconds.

    A round is one agreement of the ranks (an MBSGD step, a local-SGD averaging), however
    many collectives it takes. Bytes are the payload a rank contributes (numel x element
    size), a figure that does not depend on the all-reduce algorithm the backend picks.
    ``seconds`` is the one time figure every training type means alike: how long training
    was held up waiting for communication. ``inflight_seconds`` is how long collectives were
    in flight, overlapped with computation or not (equal to ``seconds`` for blocking ones).
    """

    FIELDS = ("comm_rounds", "comm_collectives", "comm_bytes", "comm_seconds", "comm_inflight_seconds")

    def __init__(self):
        self.rounds = 0
        self.collectives = 0
        self.bytes = 0
        self.seconds = 0.0
        self.inflight_seconds = 0.0

    def count_round(self) -> None:
        self.rounds += 1

    def record(self, tensor: torch.Tensor, seconds: float, inflight_seconds: Optional[float] = None) -> None:
        """One collective of ``tensor`` that held training up for ``seconds`` and was in flight for
        ``inflight_seconds`` (default: the same, a blocking collective)."""
        self.collectives += 1
        self.bytes += tensor.numel() * tensor.element_size()
        self.add_time(seconds, seconds if inflight_seconds is None else inflight_seconds)

    def add_time(self, seconds: float, inflight_seconds: float) -> None:
        self.seconds += seconds
        self.inflight_seconds += inflight_seconds

    def snapshot(self) -> dict:
        return dict(zip(self.FIELDS, (self.rounds, self.collectives, self.bytes, self.seconds, self.inflight_seconds)))

    def state_dict(self) -> dict:
        return self.snapshot()

    def load_state_dict(self, state: dict) -> None:
        state = {"comm_inflight_seconds": state["comm_seconds"], **state}  # checkpoints written before it existed
        self.rounds, self.collectives, self.bytes, self.seconds, self.inflight_seconds = (
            state[name] for name in self.FIELDS
        )


def all_reduce_mean(tensor: torch.Tensor, meter: Optional[CommMeter] = None, group=None) -> torch.Tensor:
    """Average ``tensor`` in place across ranks (a no-op in one process), counted by ``meter``."""
    if not is_distributed():
        return tensor
    started = time.perf_counter()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    tensor.div_(dist.get_world_size(group))
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    if meter is not None:
        meter.record(tensor, time.perf_counter() - started)
    return tensor


def broadcast_int(value: int, device) -> int:
    """Rank 0's ``value`` on every rank (the value itself in one process)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def all_reduce_sum(values: list, device: torch.device) -> list:
    """Sum a few Python numbers across ranks (metrics; not counted as training traffic)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def replicas_identical(module: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters and buffers (checked by all-reducing min/max of a fingerprint)."""
    if not is_distributed():
        return True
    flat = torch.cat([t.detach().reshape(-1).double() for t in module.state_dict().values() if t.is_floating_point()])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device).remainder_(7919).add_(1)
    fingerprint = torch.stack([flat.sum(), (flat * weights).sum()])
    low, high = fingerprint.clone(), fingerprint.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))
