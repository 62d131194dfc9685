"""A Markdown table and accuracy plots of finished runs, read from the files every run writes.

    python -m tools.report runs/sweeps/local_methods --out reports/local_methods
    python -m tools.report runs/MBSGD-cifar100-lenet5w runs/PLSGD-cifar100-lenet5w --out reports/compare

Every folder under the given paths that holds summary.json is a run (config.yaml and
metrics.jsonl are read next to it). Writes ``report.md`` (one table row per run, sorted by
method, K, J) and ``accuracy_vs_epoch.png``, ``accuracy_vs_rounds.png``,
``accuracy_vs_wall_time.png`` (one line per setting, the mean over its seeds) and, when some run
adapts J, ``local_steps.png``. Runs that differ
only in their seed form a seed group (tools/report_groups.py): a second table of means ± std over
the seeds and ``accuracy_vs_megabytes.png``, the communication/accuracy frontier. A run with a
missing or unreadable file is skipped with a warning line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys

import yaml

from tools.report_groups import group_runs, seed_group_lines
from tools.report_style import legend_outside, short_labels, styles

TABLE_COLUMNS = (
    "run",
    "method",
    "K",
    "J",
    "best val acc %",
    "final test acc %",
    "rounds",
    "MB sent per rank",
    "comm reduction %",
    "wall time s",
    "images/s",
)
# (file, metrics key on the x axis, axis label); y is always the test accuracy of the epoch.
ACCURACY_PLOTS = (
    ("accuracy_vs_epoch.png", "epoch", "epoch"),
    ("accuracy_vs_rounds.png", "comm_rounds", "communication rounds (cumulative)"),
    ("accuracy_vs_wall_time.png", "wall_seconds", "training wall time (s)"),
)


@dataclasses.dataclass
class RunRecord:
    directory: str
    label: str
    summary: dict
    config: dict
    metrics: list

    @property
    def method(self) -> str:
        return str(self.summary.get("training_type") or self.config.get("training_type", "?"))

    @property
    def world_size(self) -> int:
        return int(self.summary.get("world_size") or (self.config.get("run") or {}).get("world_size") or 1)

    @property
    def local_steps(self):
        """J as configured; none for synchronous SGD, which has no local steps."""
        return None if self.method == "MBSGD" else self.config.get("local_steps")


def find_run_dirs(paths: list) -> list:
    found = []
    for path in paths:
        if not os.path.isdir(path):
            print(f"warning: {path} is not a folder; skipped", file=sys.stderr)
            continue
        for directory, folders, files in os.walk(path):
            folders.sort()
            if "summary.json" in files:
                found.append(directory)
    return sorted(dict.fromkeys(os.path.normpath(directory) for directory in found))


def load_run(directory: str) -> RunRecord | None:
    """The run's three files, or None (with a warning) when one is missing or unreadable."""
    try:
        with open(os.path.join(directory, "summary.json")) as handle:
            summary = json.load(handle)
        with open(os.path.join(directory, "config.yaml")) as handle:
            config = yaml.safe_load(handle) or {}
        with open(os.path.join(directory, "metrics.jsonl")) as handle:
            metrics = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError, yaml.YAMLError) as error:
        reason = f"{os.path.basename(error.filename)} missing" if isinstance(error, FileNotFoundError) else error
        print(f"warning: {directory}: {reason}; skipped", file=sys.stderr)
        return None
    if not isinstance(summary, dict) or not isinstance(config, dict):
        print(f"warning: {directory}: summary.json or config.yaml is not a mapping; skipped", file=sys.stderr)
        return None
    return RunRecord(directory, os.path.basename(directory), summary, config, metrics)


def label_runs(runs: list) -> None:
    """Label runs by folder name; where two share a name, by their path below the common folder."""
    names = [run.label for run in runs]
    if len(set(names)) == len(names):
        return
    common = os.path.commonpath([os.path.abspath(run.directory) for run in runs])
    for run in runs:
        run.label = os.path.relpath(os.path.abspath(run.directory), os.path.dirname(common))


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _images_per_second(value) -> str:
    """Blank when not recorded or NaN (a run that trained no step)."""
    return f"{value:.0f}" if isinstance(value, (int, float)) and math.isfinite(value) else ""


def table_row(run: RunRecord) -> list:
    summary = run.summary
    comm_bytes = summary.get("comm_bytes")
    return [
        run.label,
        run.method,
        str(run.world_size),
        "" if run.local_steps is None else str(run.local_steps),
        _percent(summary.get("best_val_accuracy")),
        _percent(summary.get("final_test_accuracy")),
        str(summary.get("comm_rounds", "")),
        "" if comm_bytes is None else f"{comm_bytes / 1e6:.1f}",
        _percent(summary.get("comm_reduction")),
        f"{summary.get('wall_seconds', 0):.1f}",
        _images_per_second(summary.get("images_per_second")),
    ]


def sort_key(run: RunRecord) -> tuple:
    return run.method, run.world_size, run.local_steps or 0, run.label


def markdown_table(runs: list) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join(" --- " for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(table_row(run)) + " |" for run in runs]
    return "\n".join(lines)


def _series(run: RunRecord, x_key: str, y_key: str) -> tuple:
    points = [
        (row[x_key], row[y_key]) for row in run.metrics if row.get(x_key) is not None and row.get(y_key) is not None
    ]
    return [x for x, _ in points], [y for _, y in points]


def run_lines(runs: list, x_key: str, y_key: str) -> list:
    """(label, xs, ys) per run that recorded both values."""
    labels = short_labels([run.label for run in runs])
    lines = [(label, *_series(run, x_key, y_key)) for label, run in zip(labels, runs)]
    return [line for line in lines if line[1]]


def group_lines(groups: list, x_key: str, y_key: str) -> list:
    """(label, xs, ys) per seed group: x and y averaged over its runs epoch by epoch (as far as the
    shortest run goes), so a study with seeds draws one line per setting rather than one per seed."""
    lines = []
    for group, name in zip(groups, short_labels([group.name for group in groups])):
        series = [_series(run, x_key, y_key) for run in group.runs]
        series = [(xs, ys) for xs, ys in series if xs]
        if not series:
            continue
        length = min(len(xs) for xs, _ in series)
        if any(len(xs) != length for xs, _ in series):
            print(
                f"warning: the runs of {group.name} recorded {x_key} for {sorted({len(xs) for xs, _ in series})} "
                f"epochs; its mean line stops at {length}",
                file=sys.stderr,
            )
        xs = [statistics.mean(run_xs[index] for run_xs, _ in series) for index in range(length)]
        ys = [statistics.mean(run_ys[index] for _, run_ys in series) for index in range(length)]
        seeds = f" (mean of {len(series)} seeds)" if len(series) > 1 else ""
        lines.append((name + seeds, xs, ys))
    return lines


def plot(lines: list, x_label: str, y_label: str, path: str, scale: float = 1.0) -> bool:
    """One line per (label, xs, ys); False (nothing written, an older plot at ``path`` removed) when there is none."""
    if not lines:
        if os.path.exists(path):
            os.remove(path)  # an earlier report's plot would pass for this one's
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5))
    for (label, xs, ys), (colour, marker, dash) in zip(lines, styles(len(lines))):
        axes.plot(xs, [scale * y for y in ys], color=colour, marker=marker, linestyle=dash, markersize=3, label=label)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.grid(alpha=0.3)
    legend_outside(axes, len(lines))
    figure.savefig(path, dpi=120, bbox_inches="tight")  # "tight" keeps the legend beside the axes
    pyplot.close(figure)
    return True


def write_report(runs: list, out: str) -> str:
    os.makedirs(out, exist_ok=True)
    groups = group_runs(runs)
    lines = [
        "# Run report",
        "",
        f"{len(runs)} runs. K = ranks (world size), J = configured local steps "
        "(blank for MBSGD; the starting J for AdaptiveJ). MB sent per rank = bytes each rank contributed "
        "to collectives / 1e6; comm reduction = 1 - rounds / rounds of synchronous SGD for the same steps.",
        "",
        markdown_table(runs),
        "",
        *seed_group_lines(runs, groups, out),
        "## Plots",
        "",
        "One line per setting: runs that differ only in their seed are drawn as their mean, epoch by epoch.",
        "",
    ]
    for name, x_key, x_label in ACCURACY_PLOTS:
        if plot(
            group_lines(groups, x_key, "test_accuracy"), x_label, "test accuracy (%)", os.path.join(out, name), 100
        ):
            lines += [f"![test accuracy vs {x_label}]({name})", ""]
        else:
            lines += [f"{name}: not drawn, no run recorded {x_key} with a test accuracy.", ""]
    if plot(run_lines(runs, "epoch", "local_steps"), "epoch", "local steps J", os.path.join(out, "local_steps.png")):
        lines += ["![local steps J per epoch](local_steps.png)", ""]
    else:
        lines += ["local_steps.png: not drawn, no run recorded local_steps in metrics.jsonl (only AdaptiveJ does).", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run folders or folders holding runs (searched recursively)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where report.md and the plots go")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        print(f"error: --out {args.out} is a file; give a folder for report.md and the plots", file=sys.stderr)
        return 2
    runs = [run for run in map(load_run, find_run_dirs(args.paths)) if run is not None]
    if not runs:
        print(f"error: no readable run (a folder with summary.json) under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    label_runs(runs)
    runs.sort(key=sort_key)
    print(f"wrote {write_report(runs, args.out)} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
