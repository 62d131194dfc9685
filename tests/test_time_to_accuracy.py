"""bench/time_to_accuracy.py without root: which sweep runs it picks, and its one-line refusals (the timed runs
themselves need network namespaces; docs/RESULTS.md records one)."""

import pytest

from bench import time_to_accuracy

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
