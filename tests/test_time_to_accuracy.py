"""bench/time_to_accuracy.py without root: which sweep runs it picks, and its one-line refusals (the timed runs
themselves need network namespaces; docs/RESULTS.md records one)."""

import os
import shutil

import pytest

from bench import time_to_accuracy
from bench.common import parse_markdown_table

STUDY = "configs/cifar10_study.yaml"


def test_each_pattern_picks_exactly_one_run_of_the_study():
    arguments = time_to_accuracy.parse_arguments(
        [STUDY, "--only", "training_type=MBSGD,seed=2", "training_type=PLSGD,local_steps=32,seed=2"]
    )
    runs = time_to_accuracy.chosen_runs(arguments)
    assert [run.name for run in runs] == ["training_type=MBSGD,seed=2", "training_type=PLSGD,local_steps=32,seed=2"]
    assert all(run.ranks == 2 and run.settings["dataset"] == "npy" for run in runs)


@pytest.mark.parametrize(
    "pattern, message", [("training_type=PLSGD", "matches training_type=PLSGD,local_steps=8, "), ("nothing", "none")]
)
def test_a_pattern_matching_several_runs_or_none_is_refused_in_one_line(capsys, pattern, message):
    assert time_to_accuracy.main([STUDY, "--only", pattern]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --only") and message in error and error.count("\n") == 1


TINY_SWEEP = """
name: tta_tiny
base: {dataset: synthetic, synthetic_size: 600, model: mlp, epochs: 3, batch_size: 32, log_every: 100000}
launch: {ranks: 2}
grid:
  "training_type,local_steps": [[MBSGD, null], [PLSGD, 4]]
"""


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")), reason="needs root and iproute2 (ip, tc)"
)
def test_two_runs_across_emulated_hosts_stop_at_the_target(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(TINY_SWEEP)
    out, runs = tmp_path / "tta.md", tmp_path / "runs"
    common = ["--target", "0.2", "--probe-mb", "2", "--runs-dir", str(runs), "--out", str(out)]
    assert (
        time_to_accuracy.main([str(sweep_file), "--only", "MBSGD", "PLSGD", *common, "--plot", str(tmp_path / "p.png")])
        == 0
    )
    rows = parse_markdown_table(out.read_text())
    assert [row["run"] for row in rows] == ["training_type=MBSGD", "training_type=PLSGD,local_steps=4"]
    for row in rows:
        assert row["epochs to target"] == "1"  # 20% is passed after one epoch, and the run is stopped there
        assert len(row["test accuracy per epoch (%)"].split()) == 1
    mbsgd, plsgd = (int(row["rounds (to target)"]) for row in rows)
    assert mbsgd == 600 * 0.9 // 2 // 32 and plsgd < mbsgd  # one round per step against one per 4 steps
    assert (tmp_path / "p.png").exists()
    assert time_to_accuracy.main([str(sweep_file), "--only", "MBSGD", *common]) == 0  # reused, not run again
