"""Time to accuracy on a slow link: rows of a sweep file run between two emulated hosts, then the wall-clock
seconds each needed to first reach a test accuracy.

    sudo .venv/bin/python bench/time_to_accuracy.py configs/cifar10_study.yaml --target 0.6 \\
        --only 'training_type=MBSGD,optimizer=sgd' 'training_type=PLSGD,local_steps=32' 'training_type=SlowMo'

Each chosen run (a sweep run whose folder name contains an --only pattern, exactly one per pattern) is one
main.py run with rank 0 in network namespace dtbench0 and rank 1 in dtbench1, joined by bench/two_hosts.sh's
link shaped to --rate (see bench/network_bench.py), with the sweep's settings unchanged. Time to accuracy is
the run's wall-clock seconds (training, averaging and evaluation; start-up excluded) at the end of the first
epoch whose test accuracy reaches --target, so it is resolved to epochs. Runs land in
<runs-dir>/<rate>/<run name>/ and are reused when made with the same link and arguments, unless --rerun.
Needs root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from bench.common import RunFailed, emit, fail, header_line, load_metrics, markdown_table
from bench.emulated_hosts import NAMESPACES, TWO_HOSTS, measure_link, run_pair, two_hosts
from tools.sweep_grid import SweepError, expand, load_sweep, select

HEADERS = [
    "run",
    "epochs to target",
    "seconds to target",
    "test accuracy per epoch (%)",
    "final test accuracy (%)",
    "MB sent per rank",
    "wall seconds (all epochs)",
]
FIRST_MASTER_PORT = 29700


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a sweep file (configs/*.yaml) whose runs to take")
    parser.add_argument("--only", nargs="+", required=True, help="one folder-name pattern per run to time")
    parser.add_argument("--target", type=float, default=0.6, help="test accuracy to reach, as a fraction")
    parser.add_argument("--rate", default="100mbit", help="tc rate of the link (none = unshaped)")
    parser.add_argument("--runs-dir", default="bench_runs/time_to_accuracy")
    parser.add_argument("--run-timeout", type=float, default=3600, help="seconds one run may take")
    parser.add_argument("--probe-mb", type=int, default=50, help="MB the link probe sends")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--out", help="also write the table to this markdown file")
    return parser.parse_args(argv)


def chosen_runs(arguments: argparse.Namespace) -> list:
    runs = expand(load_sweep(arguments.sweep, "unused"))
    chosen = []
    for pattern in arguments.only:
        matches = select(runs, pattern)
        if len(matches) != 1:
            names = ", ".join(run.name for run in matches) or "none"
            raise SweepError(f"--only '{pattern}' must match exactly one run of {arguments.sweep}; it matches {names}")
        if matches[0].ranks != 2:
            raise SweepError(f"run {matches[0].name} has {matches[0].ranks} rank(s); two emulated hosts take 2")
        chosen.append(matches[0])
    return chosen


def time_run(run, arguments: argparse.Namespace, port: int) -> list:
    run_dir = Path(arguments.runs_dir) / arguments.rate / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {key: value for key, value in run.settings.items() if key not in ("output_dir", "resume")}
    config = run_dir.resolve() / "tta_config.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    summary = run_pair(run_dir, arguments.rate, ["--config", str(config)], port, arguments.run_timeout, arguments.rerun)
    rows = load_metrics(run_dir)
    reached = next((row for row in rows if (row.get("test_accuracy") or 0) >= arguments.target), None)
    curve = " ".join(f"{100 * row['test_accuracy']:.1f}" for row in rows if row.get("test_accuracy") is not None)
    return [
        run.name,
        reached["epoch"] if reached else "not reached",
        f"{reached['wall_seconds']:.0f}" if reached else "-",
        curve,
        f"{100 * summary['final_test_accuracy']:.2f}",
        f"{summary['comm_bytes'] / 1e6:.1f}",
        f"{summary['wall_seconds']:.0f}",
    ]


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    try:
        runs = chosen_runs(arguments)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print(
            "error: time_to_accuracy.py needs root (it creates network namespaces); run it with sudo", file=sys.stderr
        )
        return 2
    try:
        shape = two_hosts("up", arguments.rate).removeprefix("two_hosts: up, ")
        rate = measure_link(arguments.probe_mb)
        print(f"link {arguments.rate}: {shape}; measured {rate:.1f} Mbit/s", file=sys.stderr, flush=True)
        rows = [time_run(run, arguments, FIRST_MASTER_PORT + index) for index, run in enumerate(runs)]
    except RunFailed as error:
        return fail(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        subprocess.run([str(TWO_HOSTS), "down"])
    emit(
        f"{header_line('time_to_accuracy', arguments)}\n\nLink `{arguments.rate}`: {shape.split(':')[0]}; measured "
        f"{rate:.1f} Mbit/s (TCP, {arguments.probe_mb} MB {NAMESPACES[0]} → {NAMESPACES[1]})\n\n"
        f"### Time to {100 * arguments.target:.0f}% test accuracy, rank 0 and rank 1 on two emulated hosts\n\n"
        f"{markdown_table(HEADERS, rows)}",
        arguments.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
