"""Unit tests of launcher detection (torchrun, SLURM, MPI, single process) and backend choice.

``detect_launch`` takes the environment as a dict, so torchrun and SLURM are tested with
faked environments. MPI detection asks mpi4py, so it runs under a real ``mpiexec -n 2``.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utilities.distributed import LaunchInfo, detect_launch, first_slurm_host, pick_backend

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_PREFIXES = ("SLURM_", "PMI_", "PMIX_", "OMPI_", "MPI_", "MV2_", "HYDRA_", "TORCHELASTIC_")
LAUNCHER_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def slurm_env(**extra):
    env = {
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "node[003-005,010]",
        "SLURM_JOB_ID": "123456",
    }
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- torchrun


def test_torchrun():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29411"}
    assert detect_launch(env) == LaunchInfo(3, 8, 1, "10.1.2.3", 29411, "torchrun")


def test_torchrun_defaults_for_missing_address():
    info = detect_launch({"RANK": "0", "WORLD_SIZE": "2"})
    assert info == LaunchInfo(0, 2, 0, "127.0.0.1", 29500, "torchrun")


def test_torchrun_inside_a_slurm_job_is_torchrun():
    env = slurm_env(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", MASTER_ADDR="head", MASTER_PORT="1234")
    assert detect_launch(env) == LaunchInfo(5, 8, 1, "head", 1234, "torchrun")


# ----------------------------------------------------------------------------- SLURM


def test_slurm():
    info = detect_launch(slurm_env())
    assert info == LaunchInfo(2, 4, 1, "node003", 29500 + 123456 % 1000, "slurm")
    assert info.master_port == 29956


def test_slurm_master_port_override():
    assert detect_launch(slurm_env(MASTER_PORT="31000")).master_port == 31000


def test_slurm_master_addr_override():
    assert detect_launch(slurm_env(MASTER_ADDR="login1")).master_addr == "login1"


def test_slurm_port_differs_between_jobs():
    ports = {detect_launch(slurm_env(SLURM_JOB_ID=str(job))).master_port for job in (1000, 1001, 1002)}
    assert ports == {29500, 29501, 29502}


def test_slurm_without_job_id_or_local_id():
    env = slurm_env()
    del env["SLURM_JOB_ID"], env["SLURM_LOCALID"]
    info = detect_launch(env)
    assert (info.master_port, info.local_rank, info.launcher) == (29500, 0, "slurm")


def test_slurm_with_one_task_is_a_single_process():
    env = slurm_env(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0")
    assert detect_launch(env) == LaunchInfo(0, 1, 0, "127.0.0.1", 29500, "single")


# ----------------------------------------------------------------------------- single process


def test_single_process_empty_env():
    assert detect_launch({}) == LaunchInfo(0, 1, 0, "127.0.0.1", 29500, "single")


def test_single_process_with_mpi_size_one():
    assert detect_launch({"PMI_SIZE": "1", "OMPI_COMM_WORLD_SIZE": "1"}).launcher == "single"


def test_single_process_keeps_master_port():
    assert detect_launch({"MASTER_PORT": "40000"}).master_port == 40000


def test_detect_launch_reads_os_environ_by_default(monkeypatch):
    for name in list(os.environ):
        if name.startswith(LAUNCHER_PREFIXES) or name in LAUNCHER_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert detect_launch() == LaunchInfo(1, 2, 0, "127.0.0.1", 29500, "torchrun")


# ----------------------------------------------------------------------------- node lists


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("a1", "a1"),
        ("gpu[01-04]", "gpu01"),
        ("x[7,9]", "x7"),
        ("n1,n2", "n1"),
        ("node[003-005,010]", "node003"),
        ("gpu[003-005,010],cpu1", "gpu003"),
        ("  host-a.cluster  ", "host-a.cluster"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


@pytest.mark.parametrize("nodelist, first", [("node[1-2]-ib", "node1-ib"), ("rack[1-2]-gpu[01-04]", "rack1-gpu01")])
def test_first_slurm_host_keeps_text_after_the_brackets(nodelist, first):
    # SLURM host lists may carry text after a range (and several ranges in one name); the
    # first host is the whole name with each range at its first value.
    assert first_slurm_host(nodelist) == first


# ----------------------------------------------------------------------------- MPI


def mpi_env():
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(LAUNCHER_PREFIXES) and name not in LAUNCHER_NAMES
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), MASTER_PORT="29777")
    return env


# Each rank writes its own file (the launcher may interleave the ranks' stdout).
WRITE_LAUNCH = (
    "import pathlib, sys; from utilities.distributed import detect_launch; i = detect_launch(); "
    "pathlib.Path(sys.argv[1], f'rank-{i.rank}.txt').write_text("
    "f'{i.rank} {i.world_size} {i.local_rank} {i.master_addr} {i.master_port} {i.launcher}')"
)


def test_mpi_detection_under_mpiexec(tmp_path):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        found = shutil.which("mpiexec")
        if found is None:
            pytest.skip("mpiexec not found next to the interpreter or on PATH")
        mpiexec = Path(found)
    pytest.importorskip("mpi4py")
    result = subprocess.run(
        [str(mpiexec), "-n", "2", sys.executable, "-c", WRITE_LAUNCH, str(tmp_path)],
        cwd=REPO_ROOT,
        env=mpi_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    files = sorted(tmp_path.glob("rank-*.txt"))
    assert [path.name for path in files] == ["rank-0.txt", "rank-1.txt"], "two ranks must report ranks 0 and 1"
    rows = [path.read_text().split() for path in files]
    ranks = [int(row[0]) for row in rows]
    assert ranks == [0, 1]
    assert all(int(row[1]) == 2 for row in rows)
    assert sorted(int(row[2]) for row in rows) == [0, 1]  # both ranks on this host
    assert rows[0][3] == rows[1][3] and rows[0][3]  # the master address rank 0 broadcast
    assert all(int(row[4]) == 29777 for row in rows)
    assert all(row[5] == "mpi" for row in rows)


# ----------------------------------------------------------------------------- backend


def test_nccl_on_cpu_raises():
    with pytest.raises(RuntimeError, match="nccl"):
        pick_backend("nccl", torch.device("cpu"))


def test_auto_backend_is_gloo_on_cpu():
    assert pick_backend("auto", torch.device("cpu")) == "gloo"


def test_auto_backend_is_nccl_on_cuda_device():
    assert pick_backend("auto", torch.device("cuda", 0)) == "nccl"


def test_explicit_gloo_kept():
    assert pick_backend("gloo", torch.device("cpu")) == "gloo"
    assert pick_backend("gloo", torch.device("cuda", 0)) == "gloo"


def test_only_link_failures_are_reported_as_lost_contact():
    from utilities.distributed import is_communication_failure

    peer_gone = RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:2985: Connection reset by peer")
    assert is_communication_failure(peer_gone)
    assert not is_communication_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"))
