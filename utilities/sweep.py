"""Sweeps: a grid of main.py runs from one YAML file, run one after another or as a SLURM job array.

    python -m utilities.sweep configs/smoke_sweep.yaml --dry-run          # list the runs and their commands
    python -m utilities.sweep configs/smoke_sweep.yaml                    # run them, then write results.csv
    python -m utilities.sweep configs/sweep_local_methods.yaml --only 'ranks=2'   # a subset, by folder name
    python -m utilities.sweep configs/sweep_sgdm_lr_wd.yaml --slurm-array sweep.sh && sbatch sweep.sh
    python -m utilities.sweep configs/sweep_sgdm_lr_wd.yaml --collect     # only (re)write results.csv

A sweep file:

    name: local_methods                  # folder under runs/sweeps/ unless runs_dir is given
    base: {dataset: cifar100, model: lenet5w, batch_size: 64}   # main.py settings (Config field names)
    grid:                                # the Cartesian product of these lists is run
      training_type: [PLSGD, SlowMo]
      local_steps: [8, 32]
      ranks: [2, 4]                      # ranks of the run (or launch: {ranks: K} for all runs)
      "optimizer,lr": [[lars, 0.3], [lamb, 0.002]]   # linked settings: these vary together

Every run gets a folder named from its grid values (``training_type=PLSGD,local_steps=8,ranks=2``)
holding ``sweep_config.yaml``, the merged settings main.py reads with ``--config``, and
``sweep.log``, the run's output. A run whose summary.json exists is skipped, so an interrupted
sweep continues where it stopped (an unfinished run resumes from its newest checkpoint).
A bad sweep file ends with one line on stderr and exit code 2; failed runs give exit code 1.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import fnmatch
import itertools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time

import yaml

from utilities.config import FIELDS, ConfigError, parse_config
from utilities.sweep_slurm import slurm_array_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "main.py")
SWEEP_KEYS = ("name", "base", "grid", "launch", "runs_dir")
RANKS = "ranks"
RUN_CONFIG = "sweep_config.yaml"
RUN_LOG = "sweep.log"
CONFIG_COLUMNS = ("training_type", "model", "dataset", "batch_size", "lr", "local_steps", "optimizer", "epochs")
# Launcher variables of a surrounding torchrun or SLURM step: the runs started here are their own jobs.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "SLURM_PROCID")


class SweepError(ValueError):
    """A bad sweep file; the message is one line meant for the user."""


class _SweepLoader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-4 (no dot) as a string; sweep grids are full of such numbers."""


_SweepLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                   list("-+0123456789."))


@dataclasses.dataclass
class Run:
    name: str
    grid_values: dict  # grid setting -> value, in grid order (ranks included)
    settings: dict  # what main.py gets with --config: base + grid point, output_dir = the folder
    ranks: int
    directory: str

    @property
    def config_path(self) -> str:
        return os.path.join(self.directory, RUN_CONFIG)

    def done(self) -> bool:
        return os.path.exists(os.path.join(self.directory, "summary.json"))


@dataclasses.dataclass
class Sweep:
    name: str
    base: dict
    grid: list  # [(setting names, [value tuples])]: one entry per grid key, linked keys name several settings
    ranks: int
    runs_dir: str


def _setting_name(key, where: str) -> str:
    name = str(key).strip().replace("-", "_")
    if name not in FIELDS and name != RANKS:
        close = difflib.get_close_matches(name, list(FIELDS) + [RANKS], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SweepError(f"{where}: unknown setting '{key}'{hint}; settings are Config field names "
                         f"(python main.py --help) and '{RANKS}'")
    if name in ("output_dir",):
        raise SweepError(f"{where}: '{key}' is set by the sweep (runs_dir/<run name>); leave it out")
    return name


def _grid_entry(key, values, path: str) -> tuple:
    names = tuple(_setting_name(part, f"{path}: grid") for part in str(key).split(","))
    if not isinstance(values, list) or not values:
        raise SweepError(f"{path}: grid '{key}' needs a non-empty list of values, got {values!r}")
    if len(names) == 1:
        return names, [(value,) for value in values]
    for value in values:
        if not isinstance(value, list) or len(value) != len(names):
            raise SweepError(f"{path}: grid '{key}' links {len(names)} settings, so each value must be a list of "
                             f"{len(names)}, got {value!r}")
    return names, [tuple(value) for value in values]


def _positive_ranks(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SweepError(f"{where}: ranks must be a positive whole number, got {value!r}")
    return value


def load_sweep(path: str, runs_dir: str | None = None) -> Sweep:
    """Read and check a sweep file; every problem raises SweepError with one line."""
    try:
        with open(path) as handle:
            data = yaml.load(handle, Loader=_SweepLoader)
    except OSError as error:
        raise SweepError(f"{path}: cannot read it ({error.strerror})")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise SweepError(f"{path}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}; check indentation "
                         f"and colons")
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping with name, base and grid at the top level")
    unknown = [key for key in data if key not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"{path}: unknown top-level key '{unknown[0]}'; a sweep has {', '.join(SWEEP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SweepError(f"{path}: 'name' must be a folder-safe word (letters, digits, . _ -), got {name!r}")
    base, grid, launch = data.get("base") or {}, data.get("grid"), data.get("launch") or {}
    if not isinstance(base, dict):
        raise SweepError(f"{path}: 'base' must be a mapping of setting: value")
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{path}: 'grid' must be a non-empty mapping of setting: [values]")
    if not isinstance(launch, dict) or set(launch) - {RANKS}:
        raise SweepError(f"{path}: 'launch' takes only '{RANKS}: K'")
    base = {_setting_name(key, f"{path}: base"): value for key, value in base.items()}
    ranks = _positive_ranks(base.pop(RANKS, launch.get(RANKS, 1)), path)
    entries = [_grid_entry(key, values, path) for key, values in grid.items()]
    named = [name for names, _ in entries for name in names]
    if len(set(named)) != len(named):
        raise SweepError(f"{path}: a setting appears twice in the grid")
    return Sweep(name, base, entries, ranks, runs_dir or data.get("runs_dir") or os.path.join("runs", "sweeps", name))


def _folder_value(value) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (list, tuple)):
        text = "-".join(_folder_value(item) for item in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def expand(sweep: Sweep) -> list:
    """One Run per point of the grid's Cartesian product, in grid order (the last key varies fastest)."""
    runs, seen = [], set()
    for point in itertools.product(*(values for _, values in sweep.grid)):
        grid_values = {name: value for (names, _), values in zip(sweep.grid, point) for name, value in
                       zip(names, values)}
        name = ",".join(f"{key}={_folder_value(value)}" for key, value in grid_values.items())
        if name in seen:
            raise SweepError(f"sweep {sweep.name}: two grid points make the same run '{name}'; a value is listed twice")
        seen.add(name)
        ranks = _positive_ranks(grid_values.get(RANKS, sweep.ranks), f"run {name}")
        directory = os.path.join(sweep.runs_dir, name)
        settings = {**sweep.base, **{k: v for k, v in grid_values.items() if k != RANKS}}
        # resume auto: an interrupted run continues from its newest checkpoint when the sweep is run again.
        settings.update(output_dir=directory, resume=settings.get("resume") or "auto")
        runs.append(Run(name, grid_values, settings, ranks, directory))
    return runs


def check_settings(runs: list) -> None:
    """Parse every run's settings exactly as main.py will, so a bad value fails before anything runs."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, RUN_CONFIG)
        for run in runs:
            with open(path, "w") as handle:
                yaml.safe_dump(run.settings, handle, sort_keys=False)
            try:
                parse_config(["--config", path])
            except ConfigError as error:
                raise SweepError(f"run {run.name}: {str(error).replace(path, RUN_CONFIG)}")


def select(runs: list, pattern: str | None) -> list:
    """Runs whose folder name contains ``pattern`` (shell wildcards allowed)."""
    return [run for run in runs if not pattern or fnmatch.fnmatchcase(run.name, f"*{pattern}*")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command(run: Run) -> list:
    if run.ranks == 1:
        return [sys.executable, MAIN, "--config", run.config_path]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={run.ranks}",
            f"--master_port={free_port()}", MAIN, "--config", run.config_path]


def write_run_config(run: Run, sweep_file: str) -> None:
    os.makedirs(run.directory, exist_ok=True)
    header = f"# written by python -m utilities.sweep {sweep_file}; ranks: {run.ranks}\n"
    with open(run.config_path, "w") as handle:
        handle.write(header + yaml.safe_dump(run.settings, sort_keys=False))


def _last_line(path: str) -> str:
    with open(path, errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_all(runs: list, sweep_file: str) -> list:
    """Run the runs one after another; return the names of those that failed."""
    failed = []
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
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
            code = subprocess.call(launch, stdout=log, stderr=subprocess.STDOUT, env=env)
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
    row = {"run": run.name, "status": "done" if run.done() else "missing",
           **{key: _folder_value(value) if isinstance(value, (list, tuple)) else value
              for key, value in run.grid_values.items()}}
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
    parser = argparse.ArgumentParser(prog="python -m utilities.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file", help="sweep YAML (name, base, grid, optional launch and runs_dir)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--dry-run", action="store_true", help="list the runs and their commands, run nothing")
    action.add_argument("--slurm-array", metavar="FILE.sh", help="write a SLURM job-array script, run nothing")
    action.add_argument("--collect", action="store_true", help="only write <runs_dir>/results.csv")
    parser.add_argument("--runs-dir", metavar="DIR", help="where the run folders go (default: the file's runs_dir, "
                                                          "else runs/sweeps/<name>)")
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
        check_settings(runs)
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
