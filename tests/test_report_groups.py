"""tools.report's seed groups on fake run folders (key names as main.py writes them): the seed table's
mean ± sample std, a one-run group, AdaptiveJ's J per epoch, the accuracy/MB frontier plot, and the plots'
short labels, distinct styles and one line per seed group."""

import json
from pathlib import Path

import pytest
import yaml

from tools import report
from tools.report_groups import group_name, group_runs
from tools.report_style import short_label, short_labels, styles

PAIR = "training_type=PLSGD,local_steps=8"
ADAPTIVE = "training_type=AdaptiveJ,local_steps=16"


def write_run(root: Path, name: str, settings: dict, figures: dict, local_steps=None) -> None:
    """One finished run as main.py leaves it: config.yaml, summary.json and two epochs of metrics.jsonl."""
    directory = root / name
    directory.mkdir(parents=True)
    config = {
        "dataset": "synthetic",
        "model": "mlp",
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "output_dir": str(directory),
        "overwrite": False,
        "resume": "",
        **settings,
        "run": {"code_version": f"{name}-commit", "launcher": "torchrun", "world_size": 2, "global_batch": 64},
    }
    summary = {
        "final_test_loss": 0.5,
        "steps": 22,
        "epochs": 2,
        "comm_rounds": 3,
        "comm_collectives": 3,
        "comm_seconds": 0.01,
        "comm_reduction": 0.75,
        "train_seconds": figures["wall_seconds"] - 0.5,
        "world_size": 2,
        "training_type": settings["training_type"],
        **figures,
    }
    rows = []
    for epoch in (1, 2):
        row = {
            "epoch": epoch,
            "lr": 0.05,
            "train_loss": 1.0 / epoch,
            "train_accuracy": 0.4 * epoch,
            "images_per_second": figures["images_per_second"],
            "train_seconds": 1.0,
            "val_loss": 1.0 / epoch,
            "val_accuracy": 0.4 * epoch,
            "test_loss": 1.0 / epoch,
            "test_accuracy": 0.4 * epoch,
            "step": 11 * epoch,
            "wall_seconds": 1.0 * epoch,
            "comm_rounds": epoch,
            "comm_collectives": epoch,
            "comm_bytes": figures["comm_bytes"] * epoch / 2,
            "comm_seconds": 0.0,
            "comm_inflight_seconds": 0.0,
            "epoch_comm_seconds": 0.0,
            "compute_seconds": 1.0,
        }
        if local_steps is not None:
            row["local_steps"] = local_steps[epoch - 1]
        rows.append(row)
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def seed_table_rows(text: str) -> dict:
    """The seed group table's cells by group name."""
    section = text.split("## Seed groups", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    header = [cell.strip() for cell in lines[0].strip("| ").split(" | ")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("| ").split(" | ")))) for line in lines[1:]]
    return {row["group"]: row for row in rows}


def test_seed_groups_table_and_frontier(tmp_path):
    runs = tmp_path / "runs"
    pair = {"training_type": "PLSGD", "local_steps": 8}
    write_run(
        runs,
        f"{PAIR},seed=1",
        {**pair, "seed": 1},
        {
            "final_test_accuracy": 0.80,
            "best_val_accuracy": 0.85,
            "comm_bytes": 2e6,
            "wall_seconds": 10.0,
            "images_per_second": 1000.0,
        },
    )
    write_run(
        runs,
        f"{PAIR},seed=2",
        {**pair, "seed": 2},
        {
            "final_test_accuracy": 0.84,
            "best_val_accuracy": 0.88,
            "comm_bytes": 2e6,
            "wall_seconds": 12.0,
            "images_per_second": 1200.0,
        },
    )
    write_run(
        runs,
        f"{ADAPTIVE},seed=1",
        {"training_type": "AdaptiveJ", "local_steps": 16, "seed": 1},
        {
            "final_test_accuracy": 0.70,
            "best_val_accuracy": 0.75,
            "comm_bytes": 1e6,
            "wall_seconds": 9.0,
            "images_per_second": 900.0,
        },
        local_steps=[16, 32],
    )
    out = tmp_path / "report"
    assert report.main([str(runs), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    groups = seed_table_rows(text)
    assert set(groups) == {PAIR, ADAPTIVE}
    # Hand-computed: mean (80 + 84) / 2 = 82; sample std sqrt((2^2 + 2^2) / 1) = 2.83. Val: 86.5, 0.03/sqrt(2) = 2.12.
    assert groups[PAIR]["seeds"] == "2"
    assert groups[PAIR]["final test acc %"] == "82.00 ± 2.83"
    assert groups[PAIR]["best val acc %"] == "86.50 ± 2.12"
    assert groups[PAIR]["MB sent per rank"] == "2.0"
    assert groups[PAIR]["wall time s"] == "11.0" and groups[PAIR]["images/s"] == "1100"
    assert groups[ADAPTIVE]["seeds"] == "1" and groups[ADAPTIVE]["final test acc %"] == "70.00 (1 seed)"
    assert f"- {ADAPTIVE},seed=1: J per epoch: 16 32" in text
    assert "| images/s |" in text.split("## Seed groups")[0]  # the per-run table has the column too
    assert (out / "accuracy_vs_megabytes.png").stat().st_size > 1000


def test_group_name_drops_the_seed_part():
    assert group_name(["lr=0.1,seed=1,J=8", "lr=0.1,seed=2,J=8"]) == "lr=0.1,J=8"
    assert group_name(["seed=1/PLSGD", "seed=2/PLSGD"]) == "PLSGD"
    assert group_name(["first-run", "second-run"]) == "first-run"  # no common name: the first run's
    assert group_name(["seed=4"]) == "seed=4"  # nothing left once the seed is gone


def test_short_labels_keep_the_values_and_fall_back_where_two_would_collide():
    assert short_label("training_type=PLSGD,local_steps=32,seed=2") == "PLSGD J=32 seed=2"
    assert short_label("training_type=MBSGD,optimizer=adamw,lr=0.001") == "MBSGD adamw lr=0.001"
    assert short_label("my run, tuned") == "my run, tuned"  # not key=value parts: left as it is
    # "optimizer" and "training_type" both show the value alone, so these two would read alike.
    colliding = ["training_type=SGD", "optimizer=SGD"]
    assert short_labels(colliding) == colliding


def test_styles_draw_no_two_lines_alike():
    for count in (1, 10, 25, 40, 100):
        assert len(set(styles(count))) == count
    assert [colour for colour, _, _ in styles(10)] == [f"C{index}" for index in range(10)]


def test_accuracy_plots_draw_one_line_per_setting_the_mean_over_its_seeds(tmp_path):
    runs = tmp_path / "runs"
    figures = {"best_val_accuracy": 0.8, "comm_bytes": 2e6, "wall_seconds": 2.0, "images_per_second": 10.0}
    for seed, accuracy in ((1, 0.80), (2, 0.84)):
        write_run(
            runs,
            f"{PAIR},seed={seed}",
            {"training_type": "PLSGD", "local_steps": 8, "seed": seed},
            {**figures, "final_test_accuracy": accuracy},
        )
    write_run(
        runs, ADAPTIVE, {"training_type": "AdaptiveJ", "local_steps": 16}, {**figures, "final_test_accuracy": 0.7}
    )
    loaded = [report.load_run(directory) for directory in report.find_run_dirs([str(runs)])]
    # Seed 2's epochs are shifted so that the mean differs from either run.
    loaded[2].metrics = [{**row, "test_accuracy": row["test_accuracy"] + 0.1} for row in loaded[2].metrics]
    lines = report.group_lines(group_runs(loaded), "epoch", "test_accuracy")
    assert [label for label, _, _ in lines] == ["AdaptiveJ J=16", "PLSGD J=8 (mean of 2 seeds)"]
    _, epochs, accuracies = lines[1]
    assert epochs == [1, 2] and accuracies == pytest.approx([0.45, 0.85])  # (0.4 + 0.5) / 2, (0.8 + 0.9) / 2
    out = tmp_path / "report"
    assert report.main([str(runs), "--out", str(out)]) == 0
    assert (out / "accuracy_vs_epoch.png").stat().st_size > 1000


FIGURES = {
    "final_test_accuracy": 0.8,
    "best_val_accuracy": 0.8,
    "comm_bytes": 2e6,
    "wall_seconds": 2.0,
    "images_per_second": 10.0,
}


def test_npy_folders_are_different_data_and_a_repeated_seed_is_no_second_sample(tmp_path, capsys):
    runs = tmp_path / "runs"
    npy = {"training_type": "PLSGD", "local_steps": 8, "dataset": "npy", "seed": 1}
    write_run(runs, "a", {**npy, "data_dir": "/data/a"}, FIGURES)
    write_run(runs, "b", {**npy, "data_dir": "/data/b"}, FIGURES)
    # A torchvision set's folder is only where it is cached: these two are seeds 1 and 2 of one setting...
    cached = {"training_type": "MBSGD", "dataset": "mnist"}
    write_run(runs, "c", {**cached, "data_dir": "/cache/1", "seed": 1}, FIGURES)
    write_run(runs, "d", {**cached, "data_dir": "/cache/2", "seed": 2}, FIGURES)
    # ...and this one repeats seed 2 (the same run reported twice, say).
    write_run(runs, "e", {**cached, "data_dir": "/cache/2", "seed": 2}, FIGURES)
    loaded = [report.load_run(directory) for directory in report.find_run_dirs([str(runs)])]
    groups = group_runs(loaded)
    assert [[run.label for run in group.runs] for group in groups] == [["a"], ["b"], ["c", "d"]]
    assert f"{runs / 'e'} repeats the settings and seed of {runs / 'd'}" in capsys.readouterr().err


def test_report_out_that_is_a_file_stale_plots_and_short_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        write_run(runs, f"{PAIR},seed={seed}", {"training_type": "PLSGD", "local_steps": 8, "seed": seed}, FIGURES)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert report.main([str(runs), "--out", str(a_file)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {a_file} is a file; give a folder for report.md and the plots"
    ]
    out = tmp_path / "report"
    out.mkdir()
    (out / "local_steps.png").write_text("an older report's plot")  # no run here adapts J
    short = runs / f"{PAIR},seed=2" / "metrics.jsonl"
    short.write_text(short.read_text().splitlines()[0] + "\n")  # one epoch of two
    assert report.main([str(runs), "--out", str(out)]) == 0
    assert f"warning: the runs of {PAIR} recorded epoch for [1, 2] epochs; its mean line stops at 1" in (
        capsys.readouterr().err
    )
    assert not (out / "local_steps.png").exists()
    assert (out / "report.md").read_text().endswith("\n")
