"""Seed groups for tools.report: runs that differ only in their seed (and bookkeeping) summarised together.

A group's figures are means over its runs; accuracies also carry the sample standard deviation
(n - 1), the spread a reader needs to tell a real difference between methods from seed noise.
Also the communication/accuracy frontier plot of the groups and AdaptiveJ's J per epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
import sys

from tools.report_style import legend_outside, short_labels, styles

# config.yaml fields that say where a run went or how it was babysat, never what it trained;
# two runs that differ only in these (and the seed) are repetitions of one setting.
BOOKKEEPING_SETTINGS = frozenset(
    {
        "seed",
        "output_dir",
        "timestamped_output_dir",
        "store_results",
        "resume",
        "overwrite",
        "allow_config_change",
        "keep_checkpoints",
        "epochs_per_job",
        "log_every",
        "tensorboard",
        "data_dir",
        "download",
        "dist_url",
        "timeout",
    }
)
# The same within config.yaml's `run` section: the code version changes with every commit made between
# seeds, and a resumed run or another launcher still trains the same thing.
BOOKKEEPING_RUN_FIELDS = frozenset({"code_version", "resumed_from_epoch", "launcher"})
# "seed=3" as one part of a folder name (tools.sweep names runs "key=value,key=value"), with one separator.
SEED_PART = re.compile(r"^seed=\d+(?:[,/_-]|$)|[,/_-]seed=\d+(?=[,/_-]|$)")
GROUP_COLUMNS = (
    "group",
    "method",
    "K",
    "J",
    "seeds",
    "final test acc %",
    "best val acc %",
    "rounds",
    "MB sent per rank",
    "comm reduction %",
    "wall time s",
    "images/s",
)


@dataclasses.dataclass
class SeedGroup:
    name: str
    runs: list  # tools.report.RunRecord, in report order

    def values(self, key: str, scale: float = 1.0) -> list:
        """The summary figure of every run that recorded a finite one (images/s can be NaN)."""
        found = [run.summary.get(key) for run in self.runs]
        return [scale * value for value in found if isinstance(value, (int, float)) and math.isfinite(value)]

    @property
    def megabytes(self) -> float | None:
        sent = self.values("comm_bytes", 1e-6)
        return statistics.mean(sent) if sent else None


def settings_key(config: dict) -> str:
    """The run's settings without bookkeeping, as one comparable string."""
    bookkeeping = BOOKKEEPING_SETTINGS
    if config.get("dataset") == "npy":
        bookkeeping = bookkeeping - {"data_dir"}  # there the folder is the data set, not a cache of it
    settings = {key: value for key, value in config.items() if key not in bookkeeping}
    if isinstance(settings.get("run"), dict):
        settings["run"] = {key: value for key, value in settings["run"].items() if key not in BOOKKEEPING_RUN_FIELDS}
    return json.dumps(settings, sort_keys=True, default=str)


def group_name(labels: list) -> str:
    """The labels' shared name once the seed=N part is removed; the first label when they share none."""
    stripped = {SEED_PART.sub("", label) for label in labels}
    if len(stripped) == 1:
        name = stripped.pop()
        if name:
            return name
    return labels[0]


def group_runs(runs: list) -> list:
    """Runs with equal settings, in the order their first run appears in ``runs``. A run that repeats a
    seed its group already has (the same run reported twice, say) is left out with a warning: it is no
    second sample of the seed noise."""
    members = {}
    for run in runs:
        group = members.setdefault(settings_key(run.config), [])
        twin = next((other for other in group if other.config.get("seed") == run.config.get("seed")), None)
        if twin is not None:
            print(
                f"warning: {run.directory} repeats the settings and seed of {twin.directory}; "
                "left out of the seed groups and plots",
                file=sys.stderr,
            )
            continue
        group.append(run)
    return [SeedGroup(group_name([run.label for run in group]), group) for group in members.values()]


def mean_std_text(values: list) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def mean_text(values: list, digits: int) -> str:
    return f"{statistics.mean(values):.{digits}f}" if values else ""


def group_row(group: SeedGroup) -> list:
    first = group.runs[0]
    megabytes = group.megabytes
    return [
        group.name,
        first.method,
        str(first.world_size),
        "" if first.local_steps is None else str(first.local_steps),
        str(len(group.runs)),
        mean_std_text(group.values("final_test_accuracy", 100)),
        mean_std_text(group.values("best_val_accuracy", 100)),
        mean_text(group.values("comm_rounds"), 0),
        "" if megabytes is None else f"{megabytes:.1f}",
        mean_text(group.values("comm_reduction", 100), 2),
        mean_text(group.values("wall_seconds"), 1),
        mean_text(group.values("images_per_second"), 0),
    ]


def seed_table(groups: list) -> str:
    lines = ["| " + " | ".join(GROUP_COLUMNS) + " |", "|" + "|".join(" --- " for _ in GROUP_COLUMNS) + "|"]
    lines += ["| " + " | ".join(group_row(group)) + " |" for group in groups]
    return "\n".join(lines)


def local_steps_lines(runs: list) -> list:
    """One line per run whose metrics record J (only AdaptiveJ adapts it), J as each epoch's row has it."""
    lines = []
    for run in runs:
        steps = [row["local_steps"] for row in run.metrics if row.get("local_steps") is not None]
        if steps:
            lines.append(f"- {run.label}: J per epoch: {' '.join(str(value) for value in steps)}")
    return lines


def plot_frontier(groups: list, path: str) -> list:
    """Final test accuracy against MB sent per rank, one labelled point per group (error bar: std over seeds).

    Returns the names of the groups left off: a log axis has no place for a run that sent nothing
    (one rank); nothing is written when that leaves no group."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot
    from matplotlib.ticker import NullFormatter

    figure, axes = pyplot.subplots(figsize=(8, 5))
    drawn = [group for group in groups if group.values("final_test_accuracy") and (group.megabytes or 0) > 0]
    left_off = [group.name for group in groups if group not in drawn]
    names = short_labels([group.name for group in drawn])
    # A legend, not labels beside the points: settings with the same bytes (every J=32 method) sit in one column.
    for group, name, (colour, marker, _) in zip(drawn, names, styles(len(drawn))):
        accuracies = group.values("final_test_accuracy", 100)
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else None
        seeds = f" ({len(accuracies)} seeds)" if len(accuracies) > 1 else ""
        axes.errorbar(
            group.megabytes,
            statistics.mean(accuracies),
            yerr=spread,
            fmt=marker,
            color=colour,
            capsize=3,
            label=name + seeds,
        )
    if drawn:
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())  # within a decade the minor labels run into each other
        axes.set_xlabel("MB sent per rank (log scale)")
        axes.set_ylabel("final test accuracy (%)")
        axes.grid(alpha=0.3, which="both")
        legend_outside(axes, len(drawn))
        figure.savefig(path, dpi=120, bbox_inches="tight")  # "tight" keeps the legend beside the axes
    elif os.path.exists(path):
        os.remove(path)  # an earlier report's plot would pass for this one's
    pyplot.close(figure)
    return left_off


def seed_group_lines(runs: list, groups: list, out: str) -> list:
    """report.md's seed group section: the table (when some setting ran more than once), J per epoch
    of the runs that adapt it, and the frontier plot, written into ``out``."""
    lines = ["## Seed groups", ""]
    if any(len(group.runs) > 1 for group in groups):
        lines += [
            "Runs whose config.yaml settings are equal apart from the seed and bookkeeping (output folder, "
            "resume, code version, ...). Accuracies: mean ± sample standard deviation over the seeds; "
            "the other figures are means.",
            "",
            seed_table(groups),
            "",
        ]
    else:
        # A table of one-run groups would repeat the table above row for row.
        lines += ["No setting was run with more than one seed; each run is its own group.", ""]
    adaptive = local_steps_lines(runs)
    if adaptive:
        lines += ["J after each epoch (metrics.jsonl `local_steps`):", "", *adaptive, ""]
    name = "accuracy_vs_megabytes.png"
    left_off = plot_frontier(groups, os.path.join(out, name))
    if len(left_off) == len(groups):
        return lines + [
            f"{name}: not drawn, no group both sent bytes (one-rank runs send none) and has a final test accuracy.",
            "",
        ]
    lines += [f"![final test accuracy vs MB sent per rank]({name})", ""]
    if left_off:
        lines += [f"Left off the log axis (nothing sent, or no final test accuracy): {', '.join(left_off)}.", ""]
    return lines
