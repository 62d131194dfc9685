"""What an all-reduce streaming over a slow link costs the computation beside it, per Gloo thread policy.

    sudo .venv/bin/python bench/comm_thread_cost.py                      # 100 Mbit/s, 3.2 MB rounds, both policies
    sudo .venv/bin/python bench/comm_thread_cost.py --rate 1gbit --megabytes 10 --out cost.md

Needs root. Two emulated hosts (bench/two_hosts.sh) with one process each, one compute thread each
(the 2 ranks of the network bench). Each process times a fixed matrix product (256 x 256, one thread)
alone, then while all-reduces of --megabytes MB run back to back over the shaped link, twice each,
with Gloo's network thread under each --policies entry (utilities/comm_threads.py). The table gives
the product's time alone and while streaming, the slowdown, the context switches of the process per
second, the machine's CPU split while streaming (/proc/stat: user, system, softirq), and the rounds
per second the link carried. It isolates the cost issue 16 looks for: how much of the machine the
transport's wake-ups and the kernel's packet processing take while training computes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

from bench.common import RunFailed, emit, header_line, markdown_table  # noqa: E402
from bench.emulated_hosts import ADDRESSES, VETHS, in_namespace, kill, on_two_hosts, two_hosts  # noqa: E402

HEADERS = [
    "policy",
    "rank",
    "product alone (us)",
    "while streaming (us)",
    "slowdown",
    "context switches/s",
    "CPU user / system / softirq while streaming",
    "rounds/s",
]
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--rate", default="100mbit", help="tc rate of the link")
    parser.add_argument("--megabytes", type=float, default=3.2, help="size of one all-reduce (lenet5w's state: 3.2)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each timed phase")
    parser.add_argument("--policies", nargs="+", default=["normal", "batch"], choices=("normal", "batch"))
    parser.add_argument("--port", type=int, default=29555)
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--worker", nargs=2, metavar=("RANK", "POLICY"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- inside a namespace: one process, one compute thread --------------------------------------------------------


def _cpu_times() -> list:
    with open("/proc/stat") as stat:
        return [int(value) for value in stat.readline().split()[1 : 1 + len(CPU_FIELDS)]]


def _context_switches() -> int:
    total = 0
    for thread_id in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{thread_id}/status") as status:
                total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except OSError:
            continue
    return total


def _phase(stream: bool, seconds: float, state, product) -> dict:
    import torch.distributed as dist

    dist.barrier()
    cpu, switches, started = _cpu_times(), _context_switches(), time.perf_counter()
    products = rounds = 0
    state.zero_()  # sums of zeros stay zeros: only the last element, the stop vote, carries a value
    work = dist.all_reduce(state, async_op=True) if stream else None
    while True:
        for _ in range(10):
            product()
        products += 10
        time_is_up = time.perf_counter() - started >= seconds
        if work is None:
            if time_is_up:
                break
        elif work.is_completed():
            rounds += 1
            # Each rank's own clock would let one rank start a round the other never joins; so a rank
            # whose time is up says so in the next round, and every rank stops once that round is in.
            if state[-1] > 0:
                break
            state[-1] = float(time_is_up)
            work = dist.all_reduce(state, async_op=True)
    elapsed = time.perf_counter() - started
    spent = [after - before for before, after in zip(cpu, _cpu_times())]
    return {
        "us": elapsed / products * 1e6,
        "switches_per_s": (_context_switches() - switches) / elapsed,
        "cpu": {name: value / max(1, sum(spent)) for name, value in zip(CPU_FIELDS, spent)},
        "rounds_per_s": rounds / elapsed,
    }


def worker(rank: int, policy: str, arguments: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from utilities.comm_threads import set_comm_thread_policy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{ADDRESSES[0]}:{arguments.port}", rank=rank, world_size=2)
    set_comm_thread_policy(policy)
    state = torch.zeros(int(arguments.megabytes * 1e6 / 4))
    matrix = torch.randn(256, 256)
    dist.all_reduce(state)  # connections warm
    phases = [_phase(stream, arguments.seconds, state, lambda: matrix @ matrix) for stream in (False, True) * 2]
    alone, streaming = phases[0::2], phases[1::2]
    print(
        json.dumps(
            {
                "alone_us": sum(p["us"] for p in alone) / 2,
                "streaming_us": sum(p["us"] for p in streaming) / 2,
                "switches_per_s": sum(p["switches_per_s"] for p in streaming) / 2,
                "cpu": {name: sum(p["cpu"][name] for p in streaming) / 2 for name in CPU_FIELDS},
                "rounds_per_s": sum(p["rounds_per_s"] for p in streaming) / 2,
            }
        ),
        flush=True,
    )
    dist.destroy_process_group()


# --- outside: the two hosts and the table -------------------------------------------------------------------------


def measure(policy: str, arguments: argparse.Namespace) -> list:
    """Both processes' reports for one policy."""
    command = [sys.executable, str(Path(__file__).resolve()), "--megabytes", str(arguments.megabytes)]
    command += ["--seconds", str(arguments.seconds), "--port", str(arguments.port)]
    ranks = [
        in_namespace(
            rank,
            ["env", "OMP_NUM_THREADS=1", f"GLOO_SOCKET_IFNAME={VETHS[rank]}", *command, "--worker", str(rank), policy],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [rank.communicate(timeout=60 + 8 * arguments.seconds) for rank in ranks]
    except subprocess.TimeoutExpired:
        for rank in ranks:
            kill(rank)
        tails = "\n".join(f"rank {index}: {rank.communicate()[1][-1500:]}" for index, rank in enumerate(ranks))
        raise RunFailed(f"policy {policy}: the two processes did not finish", tails) from None
    finally:
        for rank in ranks:
            kill(rank)
    reports = []
    for rank, (process, (stdout, stderr)) in enumerate(zip(ranks, outputs)):
        if process.returncode != 0 or not stdout.strip():
            raise RunFailed(f"policy {policy}: rank {rank} failed (exit {process.returncode})", stderr[-2000:])
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    return reports


def table_rows(policy: str, reports: list) -> list:
    rows = []
    for rank, report in enumerate(reports):
        cpu = report["cpu"]
        rows.append(
            [
                policy,
                rank,
                f"{report['alone_us']:.0f}",
                f"{report['streaming_us']:.0f}",
                f"{report['streaming_us'] / report['alone_us']:.2f}x",
                f"{report['switches_per_s']:,.0f}",
                f"{cpu['user']:.0%} / {cpu['system']:.0%} / {cpu['softirq']:.0%}",
                f"{report['rounds_per_s']:.2f}",
            ]
        )
    return rows


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.worker:
        worker(int(arguments.worker[0]), arguments.worker[1], arguments)
        return 0

    def every_policy() -> list:
        link = two_hosts("up", arguments.rate)
        print(link, file=sys.stderr)
        return [row for policy in arguments.policies for row in table_rows(policy, measure(policy, arguments))]

    code, rows = on_two_hosts("comm_thread_cost.py", every_policy)
    if code != 0:
        return code
    emit(
        f"{header_line('comm_thread_cost', arguments)}\n\n"
        f"### One {arguments.megabytes:g} MB all-reduce after another on a {arguments.rate} link beside a "
        f"one-thread 256 x 256 matrix product per host\n\n{markdown_table(HEADERS, rows)}",
        arguments.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
