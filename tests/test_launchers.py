"""End-to-end launches of main.py through the real launchers (DESIGN.md, style note 12).

Each test starts two ranks of a one-epoch MBSGD run on small synthetic data through one
launcher, using the sample script a user would run, and reads the run's summary.json:
two ranks must have taken part and ended with identical parameters. The launchers are
the real ones (mpiexec, two torchrun agents, sbatch on the CI SLURM cluster built by
.ci/setup_slurm.sh), so these tests catch what unit tests with spawn cannot: launcher
detection, master address and port discovery, and the scripts themselves.
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.harness import find_mpiexec

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "samplescripts"
TIMEOUT_S = 300  # per launch; a hung rendezvous must fail the test, not the CI job
SMALL_RUN_ARGS = [
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--synthetic-size",
    "2048",
    "--device",
    "cpu",
    "--backend",
    "gloo",
]
# Launcher variables of an enclosing job (pytest started under srun, torchrun or mpiexec)
# would make main.py join that job instead of the one under test.
INHERITED_LAUNCHER_PREFIXES = ("SLURM_", "PMI_", "PMIX_", "OMPI_", "TORCHELASTIC_")
INHERITED_LAUNCHER_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch_env(output_dir, **extra):
    """The environment for one launch: the scripts run this interpreter, one thread per rank."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(INHERITED_LAUNCHER_PREFIXES) and name not in INHERITED_LAUNCHER_NAMES
    }
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", TRAINING_TYPE="MBSGD", OUTPUT_DIR=str(output_dir), **extra)
    return env


def tail(text, lines=60):
    return "\n".join((text or "").splitlines()[-lines:])


def run_launchers(commands, env):
    """Start the commands side by side, wait for all; fail with their output if any fails.

    Each command gets its own session so that on a timeout, or when a launcher exits and
    leaves a rank behind, the whole process tree is killed and nothing outlives the test.
    """
    launchers = [
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for command in commands
    ]
    deadline = time.monotonic() + TIMEOUT_S
    outputs, timed_out = [], False
    try:
        for launcher in launchers:
            outputs.append(launcher.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        for launcher in launchers:
            try:
                os.killpg(launcher.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if timed_out:
        outputs += [launcher.communicate()[0] for launcher in launchers[len(outputs) :]]
    log = "\n".join(
        f"--- launcher {index}: {Path(command[0]).name} (exit {launcher.returncode}) ---\n{tail(output)}"
        for index, (command, launcher, output) in enumerate(zip(commands, launchers, outputs))
    )
    assert not timed_out, f"launch did not finish in {TIMEOUT_S}s\n{log}"
    assert all(launcher.returncode == 0 for launcher in launchers), log
    return log


def assert_two_identical_replicas(output_dir, log):
    summary_path = Path(output_dir) / "summary.json"
    assert summary_path.is_file(), f"the run wrote no {summary_path}\n{log}"
    summary = json.loads(summary_path.read_text())
    assert summary["world_size"] == 2, f"expected 2 ranks: {summary}\n{log}"
    assert summary["training_type"] == "MBSGD", summary
    assert summary["replicas_identical"] is True, f"ranks ended with different parameters: {summary}"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mpiexec_two_ranks(tmp_path):
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found next to the interpreter or on PATH")
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed; main.py needs it to read its rank under mpiexec")
    output_dir = tmp_path / "run"
    # main.py takes the rendezvous port from MASTER_PORT under MPI (default 29500); a free
    # one keeps this run apart from any other on the machine.
    env = launch_env(output_dir, MPIEXEC=mpiexec, NPROC="2", MASTER_PORT=str(free_port()))
    log = run_launchers([[str(SCRIPTS / "singlenoderun.sh"), *SMALL_RUN_ARGS]], env)
    assert_two_identical_replicas(output_dir, log)


def test_torchrun_two_agents(tmp_path):
    """Two torchrun agents meeting at one c10d endpoint, as on two nodes."""
    output_dir = tmp_path / "run"
    env = launch_env(
        output_dir,
        NNODES="2",
        NPROC_PER_NODE="1",
        RDZV_ENDPOINT=f"127.0.0.1:{free_port()}",
        RDZV_ID=uuid.uuid4().hex[:12],
    )
    agent_command = [str(SCRIPTS / "torchrun_multi_node.sh"), *SMALL_RUN_ARGS]
    log = run_launchers([agent_command, agent_command], env)
    assert_two_identical_replicas(output_dir, log)


def slurm_unavailable_reason():
    if shutil.which("sbatch") is None:
        return "sbatch not on PATH (run .ci/setup_slurm.sh as root to build a one-node cluster)"
    try:
        probe = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo did not answer: {error}"
    if probe.returncode != 0:
        return f"sinfo failed: {probe.stderr.strip()}"
    return None


def read_job_log(path):
    return tail(path.read_text()) if path.exists() else "(the job wrote no output)"


def test_sbatch_two_tasks(tmp_path):
    """sbatch --wait of samplescripts/ci_slurm_gloo.sh: two srun tasks rendezvous over Gloo."""
    reason = slurm_unavailable_reason()
    if reason is not None:
        if os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail(f"REQUIRE_SLURM=1 but SLURM is unusable: {reason}")
        pytest.skip(reason)
    output_dir = tmp_path / "run"
    job_log = tmp_path / "slurm-job.out"
    job_name = f"test-launchers-{uuid.uuid4().hex[:8]}"
    command = [
        "sbatch",
        "--wait",
        f"--job-name={job_name}",
        f"--output={job_log}",
        str(SCRIPTS / "ci_slurm_gloo.sh"),
        "--batch-size",
        "32",
        "--synthetic-size",
        "2048",
    ]
    try:
        result = subprocess.run(
            command, cwd=REPO_ROOT, env=launch_env(output_dir), capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", f"--name={job_name}"], timeout=30, check=False)
        pytest.fail(f"sbatch --wait did not return in {TIMEOUT_S}s; job cancelled\n{read_job_log(job_log)}")
    log = f"--- sbatch ---\n{result.stdout}{result.stderr}\n--- job output ---\n{read_job_log(job_log)}"
    assert result.returncode == 0, f"sbatch --wait exited {result.returncode}\n{log}"
    assert_two_identical_replicas(output_dir, log)
