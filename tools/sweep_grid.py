"""Sweep grids: a YAML file's base settings times its grid, expanded into named runs and checked before any runs.

See tools.sweep for the file format and the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import itertools
import json
import os
import re
import tempfile

import yaml

from utilities.config import FIELDS, ConfigError, parse_config

SWEEP_KEYS = ("name", "base", "grid", "launch", "runs_dir")
RANKS = "ranks"
MAX_FOLDER_NAME = 255  # bytes in one path component on Linux file systems
RUN_CONFIG = "sweep_config.yaml"


class SweepError(ValueError):
    """A bad sweep file; the message is one line meant for the user."""


class _SweepLoader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-4 (no dot) as a string; sweep grids are full of such numbers."""


_SweepLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


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

    def unreadable_summary(self) -> str | None:
        """Why this run's summary.json cannot be read as main.py writes it (a mapping), or None when it can
        or does not exist. main.py writes it atomically, so a bad one was damaged or edited afterwards."""
        try:
            with open(os.path.join(self.directory, "summary.json")) as handle:
                summary = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            return str(error)
        return None if isinstance(summary, dict) else "not a mapping"


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
        raise SweepError(
            f"{where}: unknown setting '{key}'{hint}; settings are Config field names "
            f"(python main.py --help) and '{RANKS}'"
        )
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
            raise SweepError(
                f"{path}: grid '{key}' links {len(names)} settings, so each value must be a list of "
                f"{len(names)}, got {value!r}"
            )
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
        raise SweepError(
            f"{path}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}; check indentation and colons"
        )
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


def folder_value(value) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (list, tuple)):
        text = "-".join(folder_value(item) for item in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def expand(sweep: Sweep) -> list:
    """One Run per point of the grid's Cartesian product, in grid order (the last key varies fastest)."""
    runs, seen = [], set()
    for point in itertools.product(*(values for _, values in sweep.grid)):
        # A null in a linked value leaves that setting out of this run (base or default), so one linked key
        # can list unlike rows: [MBSGD, null] next to [PLSGD, 8] for "training_type,local_steps".
        grid_values = {
            name: value
            for (names, _), values in zip(sweep.grid, point)
            for name, value in zip(names, values)
            if value is not None
        }
        name = ",".join(f"{key}={folder_value(value)}" for key, value in grid_values.items())
        if name in seen:
            raise SweepError(
                f"sweep {sweep.name}: two grid points make the same run '{name}'; a value is listed twice, or two "
                "values differ only in characters a folder name cannot hold (they become _)"
            )
        if len(name.encode()) > MAX_FOLDER_NAME:
            raise SweepError(
                f"sweep {sweep.name}: run '{name[:60]}...' needs a folder name of {len(name.encode())} bytes, "
                f"over the file system's {MAX_FOLDER_NAME}; move long values (paths) from the grid to base"
            )
        seen.add(name)
        ranks = _positive_ranks(grid_values.get(RANKS, sweep.ranks), f"run {name}")
        directory = os.path.join(sweep.runs_dir, name)
        settings = {**sweep.base, **{k: v for k, v in grid_values.items() if k != RANKS}}
        # resume auto: an interrupted run continues from its newest checkpoint when the sweep is run again.
        settings.update(output_dir=directory, resume=settings.get("resume") or "auto")
        runs.append(Run(name, grid_values, settings, ranks, directory))
    return runs


def check_runs_dir(runs_dir: str) -> None:
    if os.path.exists(runs_dir) and not os.path.isdir(runs_dir):
        raise SweepError(f"runs folder {runs_dir} is a file; give --runs-dir a folder")


def check_summaries(runs: list) -> None:
    """A run whose summary.json is damaged would count as done and break results.csv: refuse it up front."""
    for run in runs:
        reason = run.unreadable_summary()
        if reason:
            raise SweepError(
                f"run {run.name}: its summary.json is unreadable ({reason}); move it away and run the sweep "
                "again to resume that run from its checkpoints"
            )


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
