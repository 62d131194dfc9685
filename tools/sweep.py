"""Sweeps: a grid of main.py runs from one YAML file, run one after another or as a SLURM job array.

    python -m tools.sweep configs/smoke_sweep.yaml --dry-run          # list the runs and their commands
    python -m tools.sweep configs/smoke_sweep.yaml                    # run them, then write results.csv
    python -m tools.sweep configs/sweep_local_methods.yaml --only 'ranks=2'   # a subset, by folder name
    python -m tools.sweep configs/sweep_sgdm_lr_wd.yaml --slurm-array sweep.sh && sbatch sweep.sh
    python -m tools.sweep configs/sweep_sgdm_lr_wd.yaml --collect     # only (re)write results.csv

A sweep file:

    name: local_methods                  # folder under runs/sweeps/ unless runs_dir is given
    base: {dataset: cifar100, model: lenet5w, batch_size: 64}   # main.py settings (Config field names)
    grid:                                # the Cartesian product of these lists is run
      training_type: [PLSGD, SlowMo]
      local_steps: [8, 32]
      ranks: [2, 4]                      # ranks of the run (or launch: {ranks: K} for all runs)
      "optimizer,lr": [[lars, 0.3], [lamb, 0.002]]   # linked settings: these vary together
      "training_type,local_steps": [[MBSGD, null], [PLSGD, 8]]   # null: not set in that run

Every run gets a folder named from its grid values (``training_type=PLSGD,local_steps=8,ranks=2``)
holding ``sweep_config.yaml``, the merged settings main.py reads with ``--config``, and
``sweep.log``, the run's output. A run whose summary.json exists is skipped, so an interrupted
sweep continues where it stopped (an unfinished run resumes from its newest checkpoint).
A bad sweep file ends with one line on stderr and exit code 2; failed runs give exit code 1. SIGTERM stops the
sweep: the running run checkpoints and exits 75 (resumed by the next sweep), and no further run starts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import yaml

from tools.launch import child_environment, main_command
from tools.sweep_grid import (  # noqa: F401
    RUN_CONFIG,
    Run,
    Sweep,
    SweepError,
    check_runs_dir,
    check_settings,
    check_summaries,
    expand,
    folder_value,
    load_sweep,
    select,
)
from tools.sweep_slurm import slurm_array_script

RUN_LOG = "sweep.log"
CONFIG_COLUMNS = ("training_type", "model", "dataset", "batch_size", "lr", "local_steps", "optimizer", "epochs")


def command(run: Run) -> list:
    """How a run is launched: one process, or torchrun with the run's ranks."""
    return main_command(run.ranks, ["--config", run.config_path])


def write_run_config(run: Run, sweep_file: str) -> None:
    os.makedirs(run.directory, exist_ok=True)
    header = f"# written by python -m tools.sweep {sweep_file}; ranks: {run.ranks}\n"
    with open(run.config_path, "w") as handle:
        handle.write(header + yaml.safe_dump(run.settings, sort_keys=False))


def _last_line(path: str) -> str:
    with open(path, errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    return lines[-1] if lines else "(no output)"


def wait_passing_sigterm(process: subprocess.Popen) -> int:
    """The run's exit code. A SIGTERM to the sweep (kill, scancel) goes on to the run, which checkpoints where it
    stands and exits 75 (the next sweep resumes it); then the sweep ends by the same signal, launching nothing
    more."""
    received = []

    def pass_on(signum, frame):
        received.append(signum)
        process.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return code


def run_all(runs: list, sweep_file: str) -> list:
    """Run the runs one after another; return the names of those that failed."""
    failed = []
    env = child_environment()
    for number, run in enumerate(runs, 1):
        label = f"[{number}/{len(runs)}] {run.name}"
        if run.done():
            print(f"{label}: done already (summary.json), skipped", flush=True)
            continue
        write_run_config(run, sweep_file)
        log_path = os.path.join(run.directory, RUN_LOG)
        started = time.perf_counter()
        print(f"{label}: running on {run.ranks} rank(s), log in {log_path}", flush=True)
        launch = command(run)
        with open(log_path, "a") as log:
            log.write(f"$ {shlex.join(launch)}\n")
            log.flush()
            code = wait_passing_sigterm(subprocess.Popen(launch, stdout=log, stderr=subprocess.STDOUT, env=env))
        seconds = time.perf_counter() - started
        if code == 0 and run.done():
            with open(os.path.join(run.directory, "summary.json")) as handle:
                accuracy = json.load(handle).get("final_test_accuracy")
            print(f"{label}: finished in {seconds:.1f} s, test accuracy {accuracy}", flush=True)
        else:
            print(f"{label}: FAILED (exit {code}) after {seconds:.1f} s: {_last_line(log_path)}", flush=True)
            failed.append(run.name)
    return failed


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def result_row(run: Run) -> dict:
    """Grid values, then summary.json, then the key settings from the config.yaml main.py wrote."""
    row = {
        "run": run.name,
        "status": "done" if run.done() else "missing",
        **{
            key: folder_value(value) if isinstance(value, (list, tuple)) else value
            for key, value in run.grid_values.items()
        },
    }
    if run.done():
        with open(os.path.join(run.directory, "summary.json")) as handle:
            for key, value in json.load(handle).items():
                row.setdefault(key, value)
    config = _read_yaml(os.path.join(run.directory, "config.yaml"))
    for key in CONFIG_COLUMNS:
        row.setdefault(key, config.get(key, run.settings.get(key, "")))
    row.setdefault("world_size", (config.get("run") or {}).get("world_size", ""))
    return row


def write_results(runs: list, runs_dir: str) -> str:
    rows = [result_row(run) for run in runs]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    os.makedirs(runs_dir, exist_ok=True)
    path = os.path.join(runs_dir, "results.csv")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file", help="sweep YAML (name, base, grid, optional launch and runs_dir)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--dry-run", action="store_true", help="list the runs and their commands, run nothing")
    action.add_argument("--slurm-array", metavar="FILE.sh", help="write a SLURM job-array script, run nothing")
    action.add_argument("--collect", action="store_true", help="only write <runs_dir>/results.csv")
    parser.add_argument(
        "--runs-dir",
        metavar="DIR",
        help="where the run folders go (default: the file's runs_dir, else runs/sweeps/<name>)",
    )
    parser.add_argument("--only", metavar="PATTERN", help="only runs whose folder name contains PATTERN (wildcards ok)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    try:
        sweep = load_sweep(args.sweep_file, args.runs_dir)
        every_run = expand(sweep)
        runs = select(every_run, args.only)
        if not runs:
            raise SweepError(f"--only {args.only!r} matches none of the {len(every_run)} runs")
        check_runs_dir(sweep.runs_dir)
        check_settings(runs)
        check_summaries(every_run)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            state = "done" if run.done() else "to run"
            print(f"{run.name} [{state}]: {shlex.join(command(run))}")
        print(f"{len(runs)} runs ({sum(run.done() for run in runs)} done) in {sweep.runs_dir}")
        return 0
    if args.slurm_array:
        for run in runs:
            write_run_config(run, args.sweep_file)
        with open(args.slurm_array, "w") as handle:
            handle.write(slurm_array_script(runs, sweep, args.sweep_file))
        print(f"wrote {args.slurm_array}: {len(runs)} array tasks; submit with: sbatch {args.slurm_array}")
        return 0
    failed = [] if args.collect else run_all(runs, args.sweep_file)
    print(f"wrote {write_results(every_run, sweep.runs_dir)}")
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
