"""Exact resume, a killed rank, divergence, and bad input, all through main.py as users run it."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.harness import (
    REPO,
    TINY,
    check_ok,
    child_env,
    final_model,
    free_port,
    metrics,
    run_main,
    summary,
    without_timings,
)
from utilities.checkpoint import load_checkpoint

SMALL = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "1400",
    "--model",
    "mlp",
    "--batch-size",
    "32",
    "--log-every",
    "1000",
    "--deterministic",
]


@pytest.mark.parametrize(
    "training_type,extra",
    [
        ("MBSGD", []),
        ("PLSGD", ["--local-steps", "5"]),  # 19 steps per epoch: the checkpoint falls mid-period
        ("SlowMo", ["--local-steps", "5", "--slow-momentum", "0.6"]),
        ("AdaptiveJ", ["--local-steps", "4", "--min-local-steps", "2"]),
        ("EASGD", ["--local-steps", "5"]),  # the center variable must come back from the checkpoint
    ],
)
def test_stopped_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, training_type, extra):
    args = [*SMALL, "--training-type", training_type, *extra, "--epochs", "3"]
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    check_ok(run_main([*args, "--output-dir", str(whole)], nproc=2))
    check_ok(run_main([*args, "--output-dir", str(pieces), "--epochs-per-job", "1"], nproc=2))
    assert not (pieces / "summary.json").exists() and len(metrics(pieces)) == 1
    check_ok(run_main([*args, "--output-dir", str(pieces), "--resume", "auto", "--epochs-per-job", "1"], nproc=2))
    check_ok(run_main([*args, "--output-dir", str(pieces), "--resume", "auto"], nproc=2))
    expected, resumed = final_model(whole), final_model(pieces)
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert without_timings(metrics(pieces)) == without_timings(metrics(whole))
    assert summary(pieces)["comm_rounds"] == summary(whole)["comm_rounds"]


def test_resume_auto_skips_a_corrupt_newest_checkpoint(tmp_path):
    args = [*SMALL, "--epochs", "3", "--output-dir", str(tmp_path)]
    check_ok(run_main([*args, "--epochs-per-job", "2"]))
    newest = tmp_path / "checkpoints" / "epoch-00002.pt"
    newest.write_bytes(newest.read_bytes()[:-100])
    result = run_main([*args, "--resume", "auto"])
    check_ok(result)
    assert "warning:" in result.stderr and "epoch-00002.pt" in result.stderr
    assert "resuming after epoch 1" in result.stderr
    assert [row["epoch"] for row in metrics(tmp_path)] == [1, 2, 3]


def test_keep_checkpoints_bounds_disk_use(tmp_path):
    check_ok(run_main([*SMALL, "--epochs", "3", "--keep-checkpoints", "1", "--output-dir", str(tmp_path)], nproc=2))
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["epoch-00003.pt", "epoch-00003.rank-1.pt"]


def _children(pid: int) -> list:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in result.stdout.split()]


def _wait_for_epochs(output_dir, count: int, process, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (output_dir / "metrics.jsonl").exists() and len(metrics(output_dir)) >= count:
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no epoch {count} within {timeout} s")


def test_torchrun_restarts_a_killed_rank_from_the_last_checkpoint(tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--max-restarts=1",
        f"--master_port={free_port()}",
        str(REPO / "main.py"),
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "6000",
        "--model",
        "mlp",
        "--batch-size",
        "16",
        "--epochs",
        "4",
        "--log-every",
        "1000",
        "--resume",
        "auto",
        "--output-dir",
        str(tmp_path),
    ]
    agent = subprocess.Popen(
        command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_epochs(tmp_path, 1, agent)
        # metrics.jsonl leads the checkpoints: wait for every rank's file, or epoch 1 is rightly not resumable.
        while not all(
            (tmp_path / "checkpoints" / name).exists()
            for name in ("epoch-00001.pt.sha256", "epoch-00001.rank-1.pt.sha256")
        ):
            assert agent.poll() is None
            time.sleep(0.1)
        ranks = _children(agent.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGKILL)  # mid-epoch 2
        _, stderr = agent.communicate(timeout=300)
    finally:
        agent.kill()
    assert agent.returncode == 0, stderr[-3000:]
    assert stderr.count("resuming after epoch") >= 1
    assert [row["epoch"] for row in metrics(tmp_path)] == [1, 2, 3, 4]
    assert summary(tmp_path)["replicas_identical"] and summary(tmp_path)["epochs"] == 4


def test_without_restarts_the_surviving_rank_exits_with_one_clear_line(tmp_path):
    port = free_port()
    ranks = []
    for rank in range(2):
        env = dict(
            child_env(),
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        ranks.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "main.py"),
                    "--dataset",
                    "synthetic",
                    "--synthetic-size",
                    "6000",
                    "--model",
                    "mlp",
                    "--batch-size",
                    "16",
                    "--epochs",
                    "20",
                    "--timeout",
                    "30",
                    "--output-dir",
                    str(tmp_path),
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        _wait_for_epochs(tmp_path, 1, ranks[0])
        ranks[1].send_signal(signal.SIGKILL)
        started = time.time()
        _, stderr = ranks[0].communicate(timeout=120)
    finally:
        for process in ranks:
            process.kill()
    assert time.time() - started < 60
    assert ranks[0].returncode not in (0, None)
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost contact" in errors[0], stderr[-2000:]


def test_divergence_stops_naming_step_and_lr_and_keeps_the_last_good_checkpoint(tmp_path):
    # The LR jumps a million-fold after epoch 1, so epoch 2 diverges.
    result = run_main(
        [
            *SMALL,
            "--epochs",
            "3",
            "--lr-schedule",
            "multistep",
            "--milestones",
            "1",
            "--gamma",
            "1e7",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: training diverged") and " at step " in lines[-1] and "lr" in lines[-1]
    assert "Traceback" not in result.stderr
    assert load_checkpoint(str(tmp_path / "checkpoints" / "epoch-00001.pt"))["progress"]["epoch"] == 1
    assert not (tmp_path / "checkpoints" / "epoch-00002.pt").exists()


def test_on_nan_skip_drops_the_bad_steps_and_finishes(tmp_path):
    check_ok(run_main([*SMALL, "--epochs", "2", "--lr", "1e9", "--on-nan", "skip", "--output-dir", str(tmp_path)]))
    assert summary(tmp_path)["skipped_steps"] > 0


def test_check_replicas_passes_for_correct_syncs(tmp_path):
    check_ok(
        run_main(
            [
                *TINY,
                "--training-type",
                "PLSGD",
                "--local-steps",
                "3",
                "--check-replicas",
                "--output-dir",
                str(tmp_path),
            ],
            nproc=2,
        )
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    check_ok(run_main([*TINY, "--output-dir", str(folder)]))
    return folder


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


BAD_INPUTS = {
    "unknown training type": (["--training-type", "FedAvg"], "--training-type"),
    "unknown dataset": (["--dataset", "imagenet"], "--dataset"),
    "unknown model": (["--model", "resnet152"], "--model"),
    "unknown optimizer": (["--optimizer", "adagrad"], "--optimizer"),
    "J below 1": (["--local-steps", "0"], "--local-steps"),
    "negative LR": (["--lr", "-0.1"], "--lr"),
    "zero LR": (["--lr", "0"], "--lr"),
    "batch size 0": (["--batch-size", "0"], "--batch-size"),
    "val ratio 0": (["--val-ratio", "0"], "--val-ratio"),
    "val ratio 1.5": (["--val-ratio", "1.5"], "--val-ratio"),
    "not a number": (["--epochs", "ten"], "--epochs"),
    "unknown flag": (["--learning-rate", "0.1"], "--learning-rate"),
    "missing data, no download": (["--dataset", "mnist", "--no-download", "--data-dir", "/nonexistent"], "mnist"),
    "batch larger than a shard": (["--batch-size", "100000"], "batch"),
    "NCCL without GPUs": (["--backend", "nccl", "--device", "cpu"], "nccl"),
    "CUDA without GPUs": (["--device", "cuda"], "cuda"),
    "workers for a non-Hogwild type": (["--workers-per-node", "2"], "--workers-per-node"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_exit_2_and_leaves_the_output_folder_alone(case, finished_run):
    flags, named = BAD_INPUTS[case]
    before = snapshot(finished_run)
    result = run_main([*TINY, "--overwrite", *flags, "--output-dir", str(finished_run)])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], result.stderr
    assert snapshot(finished_run) == before


def test_bad_yaml_and_unknown_keys(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [0.1\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rate: 0.1\n")
    for path, named in ((broken, "not valid YAML"), (unknown, "unknown key 'learning_rate'")):
        result = run_main([*TINY, "--config", str(path), "--output-dir", str(tmp_path / "run")])
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and named in result.stderr
        assert not (tmp_path / "run").exists()


def test_a_folder_with_a_run_is_refused_and_left_alone(finished_run):
    before = snapshot(finished_run)
    result = run_main([*TINY, "--output-dir", str(finished_run)])
    assert result.returncode == 2 and "holds another run" in result.stderr
    assert snapshot(finished_run) == before


def test_corrupt_or_mismatched_checkpoint_on_resume(tmp_path, finished_run):
    checkpoint = finished_run / "checkpoints" / "epoch-00001.pt"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[: len(checkpoint.read_bytes()) // 2])
    result = run_main([*TINY, "--epochs", "2", "--resume", str(corrupt), "--output-dir", str(tmp_path / "a")])
    assert result.returncode == 2 and "cannot be loaded" in result.stderr and "Traceback" not in result.stderr
    before = snapshot(finished_run)
    mismatched = run_main(
        [*TINY, "--epochs", "2", "--model", "mlp", "--resume", str(checkpoint), "--output-dir", str(finished_run)]
    )
    assert mismatched.returncode == 2 and "another run" in mismatched.stderr
    assert snapshot(finished_run) == before
