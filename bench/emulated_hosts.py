"""Running main.py as two emulated hosts: rank 0 in network namespace dtbench0, rank 1 in dtbench1, joined
by the shaped link bench/two_hosts.sh makes; the link's rate measured with a TCP probe."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import LAUNCH_FILE, REPO, RunFailed, child_environment, fail, failure_reason, load_summary

TWO_HOSTS = REPO / "bench" / "two_hosts.sh"
NAMESPACES = ("dtbench0", "dtbench1")
VETHS = ("dtveth0", "dtveth1")
ADDRESSES = ("10.77.0.1", "10.77.0.2")
PROBE_PORT = 29400
KILL_GRACE_S = 30  # how long the other rank may take to notice that its peer failed
LOCK_FILE = "/tmp/dtbench-network.lock"  # the namespace names are fixed: one user of them at a time


def on_two_hosts(script: str, work):
    """Run ``work()`` (which brings the link up and runs across it) as the one user of the namespaces:
    (exit code, its result). Needs root; the namespaces are removed at the end, on failure and on Ctrl-C
    or SIGTERM; a failed run is reported in one line (its log tail below)."""
    if os.geteuid() != 0:
        print(f"error: {script} needs root (it creates network namespaces); run it with sudo", file=sys.stderr)
        return 2, None
    lock = open(LOCK_FILE, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"error: another network bench holds {LOCK_FILE}; the namespaces are in use", file=sys.stderr)
        return 2, None
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
            signal.signal(signum, _raise_interrupt)
    try:
        return 0, work()
    except RunFailed as error:
        return fail(error), None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130, None
    finally:
        subprocess.run([str(TWO_HOSTS), "down"])
        lock.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def two_hosts(*command: str) -> str:
    result = subprocess.run([str(TWO_HOSTS), *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise RunFailed(f"two_hosts.sh {' '.join(command)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def in_namespace(index: int, command: list, **popen) -> subprocess.Popen:
    """Start ``command`` inside namespace ``index`` in its own process group (so it can be killed as a whole)."""
    return subprocess.Popen(
        [str(TWO_HOSTS), "run", NAMESPACES[index], "--", *command], cwd=REPO, start_new_session=True, **popen
    )


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def measure_link(megabytes: int) -> float:
    """Mbit/s a TCP stream achieves from dtbench0 to dtbench1 (payload bits over the receiver's time)."""
    probe = [sys.executable, "-c"]  # run from the repository root (in_namespace), so bench.* imports
    receiver = in_namespace(
        1,
        [*probe, f"from bench.emulated_hosts import receive_probe; receive_probe({PROBE_PORT})"],
        stdout=subprocess.PIPE,
        text=True,
    )
    sender = None
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise RunFailed("the link probe's receiver did not start")
        target = f"{ADDRESSES[1]}:{PROBE_PORT}:{megabytes}"
        sender = in_namespace(0, [*probe, f"from bench.emulated_hosts import send_probe; send_probe({target!r})"])
        sender.wait(timeout=600)
        report = json.loads(receiver.communicate(timeout=60)[0])
    finally:
        kill(receiver)
        if sender is not None:
            kill(sender)
    return report["bytes"] * 8 / report["seconds"] / 1e6


def receive_probe(port: int) -> None:
    with socket.create_server(("0.0.0.0", port)) as server:
        print("ready", flush=True)
        connection, _ = server.accept()
        with connection:
            received, started = 0, time.perf_counter()
            while chunk := connection.recv(1 << 20):
                received += len(chunk)
            seconds = time.perf_counter() - started
    print(json.dumps({"bytes": received, "seconds": seconds}), flush=True)


def send_probe(target: str) -> None:
    host, port, megabytes = target.split(":")
    payload = bytes(1 << 20)
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        for _ in range(int(megabytes)):
            connection.sendall(payload)


# --- one run: a rank in each namespace ---------------------------------------------------------------------------


def run_pair(run_dir: Path, link: str, args: list, master_port: int, timeout_s: float, rerun: bool) -> dict:
    """Run main.py with rank 0 in dtbench0 and rank 1 in dtbench1 into ``run_dir`` (or reuse it); its summary."""
    record = {
        "ranks": 2,
        "link": link,
        "tbf": [os.environ.get("TBF_BURST"), os.environ.get("TBF_LATENCY")],
        "args": args,
    }
    launch_file = run_dir / LAUNCH_FILE
    if (
        not rerun
        and (run_dir / "summary.json").exists()
        and launch_file.exists()
        and json.loads(launch_file.read_text()) == record
    ):
        print(f"reusing {run_dir}", file=sys.stderr)
        return load_summary(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").unlink(missing_ok=True)  # a failed run must not leave an old result behind
    launch_file.write_text(json.dumps(record) + "\n")
    print(f"running {run_dir} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    exit_codes, tails, timed_out = run_ranks(run_dir, args, master_port, timeout_s)
    if any(exit_codes) or not (run_dir / "summary.json").exists():
        launch_file.unlink()
        both = "\n".join(f"[rank {rank}] {line}" for rank in (0, 1) for line in tails[rank].splitlines())
        if timed_out:
            raise RunFailed(f"run {run_dir} killed at the --run-timeout of {timeout_s:.0f} s", both)
        reasons = [
            f"rank {rank}: " + (f"killed by {signal.Signals(-code).name}" if code < 0 else failure_reason(tails[rank]))
            for rank, code in enumerate(exit_codes)
            if code
        ] or ["no summary.json written"]
        raise RunFailed(f"run {run_dir} failed (exit codes {exit_codes}): {'; '.join(reasons)}", both)
    print(f"  done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return load_summary(run_dir)


def run_ranks(run_dir: Path, args: list, master_port: int, timeout_s: float, stop_when=None) -> tuple:
    """Both ranks to the end, the time limit or until ``stop_when()`` is true (then both are killed): exit codes
    (-9: killed), last lines of their logs, timed out?"""
    command = [sys.executable, str(REPO / "main.py"), *args, "--output-dir", str(run_dir.resolve()), "--overwrite"]
    ranks, logs = [], [run_dir / f"bench_log_rank{rank}.txt" for rank in (0, 1)]
    try:
        for rank in (0, 1):
            environment = dict(
                child_environment(),
                RANK=str(rank),
                WORLD_SIZE="2",
                LOCAL_RANK="0",
                LOCAL_WORLD_SIZE="1",
                MASTER_ADDR=ADDRESSES[0],
                MASTER_PORT=str(master_port),
                GLOO_SOCKET_IFNAME=VETHS[rank],
            )
            with open(logs[rank], "w") as log:
                log.write(shlex.join(command) + "\n")
                log.flush()
                ranks.append(in_namespace(rank, command, env=environment, stdout=log, stderr=subprocess.STDOUT))
        timed_out = wait_for_ranks(ranks, time.monotonic() + timeout_s, stop_when)
    finally:
        for process in ranks:
            kill(process)
    exit_codes = [process.returncode for process in ranks]
    return exit_codes, ["\n".join(log.read_text().splitlines()[-15:]) for log in logs], timed_out


def wait_for_ranks(ranks: list, deadline: float, stop_when=None) -> bool:
    """Wait until both ranks exit, or one fails and the other had KILL_GRACE_S to follow, or ``stop_when()``;
    True if time ran out."""
    failed = False
    while time.monotonic() < deadline:
        if stop_when is not None and stop_when():
            return False
        codes = [process.poll() for process in ranks]
        if all(code is not None for code in codes):
            return False
        if not failed and any(code not in (None, 0) for code in codes):
            failed, deadline = True, min(deadline, time.monotonic() + KILL_GRACE_S)
        time.sleep(0.5)
    return not failed


# --- the table -------------------------------------------------------------------------------------------------
