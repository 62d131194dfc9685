"""samplescripts/slurmrun.sh on the CI SLURM cluster (.ci/setup_slurm.sh): `scancel --signal=USR1` mid-epoch,
the ranks checkpoint and exit 75, the script requeues the job, and the requeued job finishes the run with
--resume auto, bit-identical to an uninterrupted run. Skipped without SLURM unless REQUIRE_SLURM=1."""

import os
import re
import subprocess
import time
import uuid

import pytest
import torch

from tests.harness import check_ok, final_model, run_main
from tests.test_launchers import SCRIPTS, launch_env, read_job_log, slurm_unavailable_reason
from tests.test_preemption import IN_EPOCH_2, mid_epoch_files

EXTRA = ["--synthetic-size", "6000", "--deterministic", "--log-every", "20", "--timeout", "60"]
SETTINGS = dict(
    TRAINING_TYPES="PLSGD",
    DATASET="synthetic",
    MODEL="mlp",
    EPOCHS="2",
    BATCH_SIZE="16",
    LR="0.1",
    LOCAL_STEPS="8",
    DEVICE="cpu",
    BACKEND="gloo",
)


def job_field(job_id: str, name: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    found = re.search(rf"\b{name}=(\S+)", shown)
    return found.group(1) if found else ""


def wait_until(condition, what: str, job_id: str, log, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], timeout=30, check=False)
    pytest.fail(f"no {what} within {timeout} s (job {job_id} cancelled)\n{read_job_log(log)}")


def test_scancel_usr1_requeues_the_job_and_it_finishes_bit_identically(tmp_path):
    reason = slurm_unavailable_reason()
    if reason is not None:
        if os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail(f"REQUIRE_SLURM=1 but SLURM is unusable: {reason}")
        pytest.skip(reason)
    root, log = tmp_path / "slurm", tmp_path / "job.out"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name=test-preempt-{uuid.uuid4().hex[:8]}",
            f"--output={log}",
            "--nodes=1",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            "--mem=0",
            "--gres=none",
            "--time=00:20:00",
            str(SCRIPTS / "slurmrun.sh"),
            *EXTRA,
        ],
        env=launch_env(root, OUTPUT_ROOT=str(root), **SETTINGS),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    run = root / "PLSGD"
    wait_until(lambda: log.exists() and IN_EPOCH_2 in log.read_text(), "epoch 2", job_id, log)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=30)
    wait_until(
        lambda: job_field(job_id, "JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
        "end of the job",
        job_id,
        log,
    )
    text = read_job_log(log)
    assert job_field(job_id, "JobState") == "COMPLETED", text
    assert int(job_field(job_id, "Restarts") or 0) == 1, text
    assert "preempted (checkpoint written); requeueing" in text and "PLSGD finished" in text, text
    assert len(mid_epoch_files(run)) == 2, text

    whole = tmp_path / "whole"
    arguments = [
        "--training-type",
        "PLSGD",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--data-dir",
        "data",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "0.1",
        "--local-steps",
        "8",
        "--device",
        "cpu",
        "--backend",
        "gloo",
        *EXTRA,
        "--output-dir",
        str(whole),
    ]
    check_ok(run_main(arguments, nproc=2))
    expected, got = final_model(whole), final_model(run)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
