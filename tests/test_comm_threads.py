"""Gloo's network threads under SCHED_BATCH (utilities/comm_threads.py): set on real ranks, collectives
still exact, and set by main.py runs unless --comm-thread-policy normal."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from bench.common import parse_markdown_table
from tests.harness import LEARN_ARGS, REPO, child_env, main_command, spawn_ranks
from utilities.comm_threads import GLOO_THREAD_NAMES, set_comm_thread_policy

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "SCHED_BATCH"), reason="thread policies are Linux's"
)


def _thread_policies(pid: str = "self") -> list:
    """The scheduling policy of each Gloo network thread of process ``pid``."""
    policies = []
    for thread_id in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{thread_id}/comm") as comm:
                if comm.read().strip() in GLOO_THREAD_NAMES:
                    policies.append(os.sched_getscheduler(int(thread_id)))
        except (OSError, ProcessLookupError):
            continue
    return policies


def _set_then_reduce(rank, world_size):
    changed_to_batch = set_comm_thread_policy("batch")
    after_batch = _thread_policies()
    total = torch.full((1000,), float(rank + 1))
    dist.all_reduce(total)
    changed_to_normal = set_comm_thread_policy("normal")
    return changed_to_batch, after_batch, total.unique().tolist(), changed_to_normal, _thread_policies()


def test_gloo_network_threads_take_the_policy_and_collectives_stay_exact():
    for changed_to_batch, after_batch, reduced, changed_to_normal, after_normal in spawn_ranks(_set_then_reduce, 2):
        assert changed_to_batch >= 1 and changed_to_normal == changed_to_batch
        assert after_batch == [os.SCHED_BATCH] * changed_to_batch
        assert reduced == [3.0]  # 1 + 2 on every element
        assert after_normal == [os.SCHED_OTHER] * changed_to_normal


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="batch"):
        set_comm_thread_policy("fifo")


def _rank_processes(launcher_pid: int) -> list:
    """The pids of main.py processes started by the torchrun with ``launcher_pid``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                is_main = b"main.py" in cmdline.read()
        except OSError:
            continue
        if parent == launcher_pid and is_main:
            found.append(pid)
    return found


def _policies_while_training(tmp_path, extra: list) -> list:
    """Start a 2-rank torchrun of main.py, read its ranks' Gloo thread policies once training runs, stop it."""
    args = LEARN_ARGS + ["--epochs", "200", "--training-type", "PLSGD", "--local-steps", "4"]
    process = subprocess.Popen(
        main_command(2, args + ["--output-dir", str(tmp_path / "run")] + extra),
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if (tmp_path / "run" / "metrics.jsonl").exists():  # an epoch ended: the policy was set before it
                return [policy for pid in _rank_processes(process.pid) for policy in _thread_policies(pid)]
            time.sleep(0.5)
        raise AssertionError(f"no epoch finished (exit {process.poll()}): {process.stderr.read()[-2000:]}")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, threads_at_least",
    [([], 2), (["--hierarchy", "2", "4", "--ranks-per-node", "1"], 4)],  # hierarchy: a node group's thread too
    ids=["flat", "hierarchy"],
)
def test_main_runs_gloo_network_threads_under_batch_scheduling(tmp_path, extra, threads_at_least):
    policies = _policies_while_training(tmp_path, extra)
    assert len(policies) >= threads_at_least and set(policies) == {os.SCHED_BATCH}


@pytest.mark.slow
def test_comm_thread_policy_normal_leaves_default_scheduling(tmp_path):
    policies = _policies_while_training(tmp_path, ["--comm-thread-policy", "normal"])
    assert len(policies) >= 2 and set(policies) == {os.SCHED_OTHER}


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")), reason="needs root and iproute2 (ip, tc)"
)
def test_the_cost_bench_measures_both_policies_across_emulated_hosts(tmp_path):
    from bench import comm_thread_cost

    out = tmp_path / "cost.md"
    assert comm_thread_cost.main(["--seconds", "0.3", "--megabytes", "1", "--out", str(out)]) == 0
    rows = parse_markdown_table(out.read_text())
    assert [(row["policy"], row["rank"]) for row in rows] == [
        ("normal", "0"),
        ("normal", "1"),
        ("batch", "0"),
        ("batch", "1"),
    ]
    for row in rows:
        assert float(row["product alone (us)"]) > 0 and float(row["rounds/s"]) > 0  # the link carried rounds
        assert float(row["context switches/s"].replace(",", "")) > 0
