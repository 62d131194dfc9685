"""Preemption (SIGTERM/SIGUSR1: every rank stops at the same step, exit 75, exact resume) and the
watch over LAPSGD/LPPSGD workers (a stuck worker fails its rank; workers die with their rank)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.harness import REPO, check_ok, child_env, final_model, free_port, metrics, run_main, without_timings
from train.preemption import PREEMPTED_EXIT_CODE
from utilities.checkpoint import load_checkpoint

# 6000 samples, batch 16, 2 ranks: ~168 steps per epoch, so a stop 10 steps into epoch 2 is mid-epoch.
RUN = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "6000",
    "--model",
    "mlp",
    "--batch-size",
    "16",
    "--epochs",
    "2",
    "--log-every",
    "20",
    "--deterministic",
    "--timeout",
    "60",
]
IN_EPOCH_2 = "epoch 2/2 step 20/"  # rank 0's progress line: epoch 2 has begun, well before its end


def wait_for(condition, processes, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        for process in processes:
            assert process.poll() is None, (
                f"exited {process.returncode} before {what}\n{process.log.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def epochs_done(output_dir: Path) -> int:
    path = output_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def start(command: list, log: Path, env: dict = None) -> subprocess.Popen:
    """Start ``command`` with its stderr in ``log``, which the test can read while it runs."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, cwd=REPO, env=env or child_env(), stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
    process.log = log
    return process


def logged(process, text: str):
    return lambda: text in process.log.read_text()


def start_ranks(args: list, folder: Path, world_size: int = 2) -> list:
    """The ranks of one run as separate processes (as torchrun starts them), to see each one's exit code."""
    port, ranks = free_port(), []
    for rank in range(world_size):
        env = dict(
            child_env(),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        ranks.append(start([sys.executable, str(REPO / "main.py"), *args], folder / f"rank-{rank}.log", env))
    return ranks


def finish(processes: list, timeout: float = 180) -> list:
    """Wait for the processes; their stderr."""
    try:
        for process in processes:
            process.wait(timeout=timeout)
        return [process.log.read_text() for process in processes]
    finally:
        for process in processes:
            process.kill()


def mid_epoch_files(output_dir: Path) -> list:
    return sorted(p.name for p in (output_dir / "checkpoints").glob("*.step-*.pt"))


@pytest.mark.parametrize(
    "training_type,extra,stop_signal",
    [
        ("MBSGD", [], signal.SIGTERM),
        # J=5 with --overlap: the stop (a multiple of 10 steps) falls on a round just begun, still in flight.
        # A fixed depth: the automatic one follows measured times, so no two runs need to take the same steps.
        ("PLSGD", ["--local-steps", "5", "--overlap", "--overlap-steps", "1", "--fragments", "1"], signal.SIGUSR1),
        # Streamed fragments (--fragments auto): fragment 0 begins at every multiple of 5 steps, so it is in flight.
        ("PLSGD", ["--local-steps", "5", "--overlap", "--overlap-steps", "1"], signal.SIGTERM),
    ],
)
def test_a_signal_to_one_rank_stops_both_mid_epoch_and_resume_is_bit_identical(
    tmp_path, training_type, extra, stop_signal
):
    args = [*RUN, "--training-type", training_type, *extra]
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    check_ok(run_main([*args, "--output-dir", str(whole)], nproc=2))
    ranks = start_ranks([*args, "--output-dir", str(pieces)], tmp_path)
    wait_for(logged(ranks[0], IN_EPOCH_2), ranks, "epoch 2")
    ranks[1].send_signal(stop_signal)  # one rank only: its flag must stop the other too
    stderr = finish(ranks)
    assert [r.returncode for r in ranks] == [PREEMPTED_EXIT_CODE] * 2, stderr
    assert "Traceback" not in stderr[0] + stderr[1]
    assert f"preempted by {stop_signal.name}" in stderr[0] and "--resume auto" in stderr[0]
    names = mid_epoch_files(pieces)
    assert len(names) == 2 and names[1].endswith(".rank-1.pt"), names  # one mid-epoch file per rank
    state = load_checkpoint(str(pieces / "checkpoints" / names[0]))
    assert state["progress"]["epoch"] == 1 and 0 < state["progress"]["epoch_partial"]["steps"] < 160
    if "--overlap" in extra:  # the round in flight travels with the checkpoint
        sync = state["sync"]
        averagers = (
            [f["averager"] for f in sync["fragments"]["fragments"]] if "fragments" in sync else [sync["averager"]]
        )
        assert any("pending" in averager for averager in averagers)
        assert ("fragments" in sync) == ("--fragments" not in extra)

    resumed = run_main([*args, "--output-dir", str(pieces), "--resume", "auto"], nproc=2)
    check_ok(resumed)
    assert "(mid-epoch)" in resumed.stderr
    expected, got = final_model(whole), final_model(pieces)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert without_timings(metrics(pieces)) == without_timings(metrics(whole))


def test_sigterm_to_the_torchrun_agent_checkpoints_mid_epoch_and_resumes_exactly(tmp_path):
    args = [*RUN, "--training-type", "PLSGD", "--local-steps", "4"]
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    check_ok(run_main([*args, "--output-dir", str(whole)], nproc=2))
    agent = start(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            str(REPO / "main.py"),
            *args,
            "--resume",
            "auto",
            "--output-dir",
            str(pieces),
        ],
        tmp_path / "agent.log",
    )
    wait_for(logged(agent, IN_EPOCH_2), [agent], "epoch 2")
    agent.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    stderr = finish([agent])[0]
    assert agent.returncode == 1  # torchrun's own code after a signal; the ranks' line is in its output
    assert "preempted by SIGTERM" in stderr, stderr[-3000:]
    assert len(mid_epoch_files(pieces)) == 2, stderr[-3000:]
    check_ok(run_main([*args, "--output-dir", str(pieces), "--resume", "auto"], nproc=2))
    expected, got = final_model(whole), final_model(pieces)
    assert all(torch.equal(expected[name], got[name]) for name in expected)


# ----- LAPSGD / LPPSGD workers -----------------------------------------------------------------------

HOGWILD = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "6000",
    "--model",
    "mlp",
    "--batch-size",
    "16",
    "--training-type",
    "LAPSGD",
    "--workers-per-node",
    "2",
    "--log-every",
    "1000",
]


def worker_pids(rank_pid: int) -> list:
    """The Hogwild worker processes of a rank (its spawned children, not multiprocessing's helpers)."""
    children = subprocess.run(["pgrep", "-P", str(rank_pid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in children if b"spawn_main" in _cmdline(int(pid))]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except OSError:
        return False


def start_hogwild(args: list):
    rank = start([sys.executable, str(REPO / "main.py"), *HOGWILD, *args], Path(args[-1]).parent / "rank.log")
    wait_for(lambda: len(worker_pids(rank.pid)) == 2, [rank], "two workers", timeout=120)
    return rank, worker_pids(rank.pid)


def test_a_stopped_worker_fails_its_rank_within_timeout_with_one_line(tmp_path):
    rank, workers = start_hogwild(["--epochs", "50", "--timeout", "5", "--output-dir", str(tmp_path / "run")])
    try:
        wait_for(lambda: epochs_done(tmp_path / "run") >= 1, [rank], "epoch 1")
        os.kill(workers[0], signal.SIGSTOP)
        started = time.time()
        stderr = finish([rank], timeout=120)[0]
        assert time.time() - started < 30
        assert rank.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "worker 0 of rank 0" in errors[0] and "no step" in errors[0], stderr[-2000:]
        wait_for(lambda: not any(alive(pid) for pid in workers), [], "the workers to exit", timeout=30)
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_die_with_a_killed_rank(tmp_path):
    rank, workers = start_hogwild(["--epochs", "50", "--output-dir", str(tmp_path / "run")])
    try:
        wait_for(lambda: epochs_done(tmp_path / "run") >= 1, [rank], "epoch 1")
        rank.kill()
        rank.wait(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in workers), [], "the workers to exit", timeout=30)
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_lapsgd_stops_at_the_epoch_end_on_a_signal_to_the_whole_step_and_resumes(tmp_path):
    args = ["--epochs", "3", "--output-dir", str(tmp_path / "run")]
    rank, workers = start_hogwild(args)
    wait_for(lambda: epochs_done(tmp_path / "run") >= 1, [rank], "epoch 1")
    for pid in [rank.pid, *workers]:  # as `scancel --signal=USR1` does: every process of the job step
        os.kill(pid, signal.SIGUSR1)
    stderr = finish([rank])[0]
    assert rank.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert "preempted by SIGUSR1" in stderr
    done = epochs_done(tmp_path / "run")
    assert 1 <= done < 3
    result = run_main([*HOGWILD, *args, "--resume", "auto"])
    check_ok(result)
    assert f"resuming after epoch {done}" in result.stderr
    assert [row["epoch"] for row in metrics(tmp_path / "run")] == [1, 2, 3]


def test_importing_the_trainers_modules_leaves_sigterm_fatal():
    """Only main.py records stop signals: a sweep, benchmark or test that imports the trainer must still die on
    SIGTERM (a sweep that survived `kill` kept launching runs)."""
    probe = (
        "import signal, sys, tools.sweep, tools.report, train.preemption, train.build, bench.network_bench; "
        "sys.exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 1)"
    )
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=child_env()).returncode == 0


@pytest.mark.slow
def test_a_sweep_stops_on_sigterm_and_its_run_checkpoints(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        "name: stop\nbase: {dataset: synthetic, synthetic_size: 20000, model: mlp, epochs: 50, batch_size: 32}\n"
        "grid:\n  seed: [1, 2]\n"
    )
    sweep = subprocess.Popen(
        [sys.executable, "-m", "tools.sweep", str(sweep_file), "--runs-dir", str(tmp_path / "runs")],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert "running" in sweep.stdout.readline()  # the first run has started
    time.sleep(8)  # into its training, past start-up
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=60) == -signal.SIGTERM
    run_log = (tmp_path / "runs" / "seed=1" / "sweep.log").read_text()
    assert "preempted by SIGTERM" in run_log and "checkpoint written" in run_log, run_log[-2000:]
    assert not (tmp_path / "runs" / "seed=2").exists()  # nothing more was launched
