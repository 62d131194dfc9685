"""Time to accuracy on a slow link: rows of a sweep file run between two emulated hosts, then the wall-clock
seconds each needed to first reach a test accuracy.

    sudo .venv/bin/python bench/time_to_accuracy.py configs/cifar10_study.yaml --target 0.6 \\
        --only 'training_type=MBSGD,seed=2' 'training_type=PLSGD,local_steps=32,seed=2' \\
               'training_type=SlowMo,local_steps=32,seed=2'

Each chosen run (a sweep run whose folder name contains an --only pattern, exactly one per pattern) is one
main.py run with rank 0 in network namespace dtbench0 and rank 1 in dtbench1, joined by bench/two_hosts.sh's
link shaped to --rate (see bench/network_bench.py), with the sweep's settings unchanged (the same epoch budget and
LR schedule as in the sweep). Time to accuracy is the run's wall-clock seconds (training, averaging and
evaluation; start-up excluded) at the end of the first epoch whose test accuracy reaches --target, so it is
resolved to epochs; the run is stopped there. Runs land in <runs-dir>/<rate>/<run name>/; a result made with the
same link, target and settings is reused unless --rerun. Needs root.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

from bench.common import RunFailed, emit, header_line, load_metrics, markdown_table  # noqa: E402
from bench.emulated_hosts import NAMESPACES, measure_link, on_two_hosts, run_ranks, two_hosts  # noqa: E402
from tools.report import plot, run_lines  # noqa: E402
from tools.sweep_grid import SweepError, expand, load_sweep, select  # noqa: E402

HEADERS = [
    "run",
    "epochs to target",
    "seconds to target",
    "test accuracy per epoch (%)",
    "MB sent per rank (to target)",
    "rounds (to target)",
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
    parser.add_argument("--plot", help="also draw test accuracy against wall-clock seconds of every run (PNG)")
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


def reached_target(run_dir: Path, target: float):
    """The first metrics row whose test accuracy reaches ``target``, or None (also while nothing is written)."""
    try:
        rows = load_metrics(run_dir)
    except (OSError, ValueError):  # not written yet, or a line half written
        return None
    return next((row for row in rows if (row.get("test_accuracy") or 0) >= target), None)


def time_run(run, arguments: argparse.Namespace, port: int) -> list:
    """Run ``run`` across the link until its test accuracy reaches the target (then both ranks are stopped: the
    rest of its epochs would not change the answer) or it ends; its table row."""
    run_dir = Path(arguments.runs_dir) / arguments.rate / run.name
    result_file = run_dir / "time_to_accuracy.json"
    settings = {key: value for key, value in run.settings.items() if key not in ("output_dir", "resume")}
    record = {"link": arguments.rate, "target": arguments.target, "settings": settings}
    if not arguments.rerun and result_file.exists() and json.loads(result_file.read_text())["record"] == record:
        print(f"reusing {run_dir}", file=sys.stderr)
        return json.loads(result_file.read_text())["row"]
    run_dir.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    config = run_dir.resolve() / "tta_config.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    print(f"running {run_dir} until {100 * arguments.target:.0f}% ...", file=sys.stderr, flush=True)
    exit_codes, tails, timed_out = run_ranks(
        run_dir,
        ["--config", str(config)],
        port,
        arguments.run_timeout,
        lambda: reached_target(run_dir, arguments.target),
    )
    reached = reached_target(run_dir, arguments.target)
    if reached is None and (timed_out or any(exit_codes)):
        both = "\n".join(f"[rank {rank}] {line}" for rank in (0, 1) for line in tails[rank].splitlines())
        raise RunFailed(f"run {run_dir} ended (exit codes {exit_codes}) before reaching the target", both)
    rows = load_metrics(run_dir)
    last = rows[-1]
    curve = " ".join(f"{100 * row['test_accuracy']:.1f}" for row in rows if row.get("test_accuracy") is not None)
    row = [
        run.name,
        reached["epoch"] if reached else f"not reached in {last['epoch']}",
        f"{reached['wall_seconds']:.0f}" if reached else "-",
        curve,
        f"{(reached or last)['comm_bytes'] / 1e6:.1f}",
        f"{(reached or last)['comm_rounds']}",
    ]
    result_file.write_text(json.dumps({"record": record, "row": row}) + "\n")
    return row


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    try:
        runs = chosen_runs(arguments)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def on_the_link() -> tuple:
        shape = two_hosts("up", arguments.rate).removeprefix("two_hosts: up, ")
        rate = measure_link(arguments.probe_mb)
        print(f"link {arguments.rate}: {shape}; measured {rate:.1f} Mbit/s", file=sys.stderr, flush=True)
        return shape, rate, [time_run(run, arguments, FIRST_MASTER_PORT + index) for index, run in enumerate(runs)]

    code, result = on_two_hosts("time_to_accuracy.py", on_the_link)
    if code:
        return code
    shape, rate, rows = result
    if arguments.plot:
        curves = [
            types.SimpleNamespace(
                label=run.name, metrics=load_metrics(Path(arguments.runs_dir) / arguments.rate / run.name)
            )
            for run in runs
        ]
        lines = run_lines(curves, "wall_seconds", "test_accuracy")
        plot(lines, "wall-clock seconds", "test accuracy (%)", arguments.plot, 100)
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
