"""Invariants every training type keeps, checked on 2 real Gloo ranks running main.py's training:

- at the end, parameters and buffers are identical on all ranks (--check-replicas passes throughout);
- every evaluation, each epoch's and the final one, is of a model identical on all ranks;
- the meter's rounds, collectives and bytes equal an independent count of the collectives issued;
- a non-finite loss on one rank only leads every rank to the same action.

Models: lenet5 (no BatchNorm) and resnet20 (BatchNorm); blocking and --overlap averaging where the
type allows it; 1 and 3 micro-batches. Six steps per epoch with J=3, so an epoch's last step begins
a round (the case where an overlapped round is still in flight at evaluation).
"""

import itertools
import json
from pathlib import Path

import pytest

from tests.invariants_harness import run_ranks

# 160 synthetic images: 144 train after the 10% validation split, 72 per rank, batch 12: 6 steps per epoch.
BASE = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "160",
    "--batch-size",
    "12",
    "--eval-batch-size",
    "32",
    "--epochs",
    "2",
    "--log-every",
    "1000",
    "--lr",
    "0.02",
    "--check-replicas",
    "--seed",
    "3",
]
TYPES = {
    "MBSGD": [],
    "PLSGD": ["--local-steps", "3"],
    "PostLocalSGD": ["--local-steps", "3", "--switch-step", "4"],
    "SlowMo": ["--local-steps", "3", "--slow-momentum", "0.5"],
    "DiLoCo": ["--local-steps", "3"],
    "AdaptiveJ": ["--local-steps", "3", "--min-local-steps", "1", "--overlap-steps", "2"],
    "EASGD": ["--local-steps", "3"],
    "TorchPeriodicAverager": ["--local-steps", "3", "--momentum-sync", "average"],
    "LAPSGD": ["--local-steps", "3", "--workers-per-node", "2"],
    "LPPSGD": ["--local-steps", "3", "--workers-per-node", "2"],
}
OVERLAP = {"PLSGD", "PostLocalSGD", "SlowMo", "DiLoCo", "AdaptiveJ"}
HOGWILD = {"LAPSGD", "LPPSGD"}


def variants(training_type: str, folder: Path) -> list:
    # Plain --overlap streams fragments (--fragments auto: 3 here, J=3); --fragments 1 overlaps the whole state.
    overlaps = [[], ["--overlap"], ["--overlap", "--fragments", "1"]] if training_type in OVERLAP else [[]]
    micro = [[]] if training_type in HOGWILD else [[], ["--accumulation-steps", "3"]]
    argvs = []
    for index, (model, overlap, accumulation) in enumerate(itertools.product(["lenet5", "resnet20"], overlaps, micro)):
        argvs.append(
            [
                *BASE,
                "--training-type",
                training_type,
                *TYPES[training_type],
                "--model",
                model,
                *overlap,
                *accumulation,
                "--output-dir",
                str(folder / f"run{index}"),
            ]
        )
    return argvs


def streams_fragments(argv: list) -> bool:
    """--overlap with --fragments auto (the default) or a count above 1."""
    if "--overlap" not in argv:
        return False
    return "--fragments" not in argv or argv[argv.index("--fragments") + 1] != "1"


@pytest.mark.parametrize("training_type", list(TYPES))
def test_every_type_evaluates_and_ends_with_one_model_and_counts_what_it_sends(training_type, tmp_path):
    ranks = run_ranks(variants(training_type, tmp_path))
    for outcomes in zip(*ranks):
        argv = " ".join(outcomes[0]["argv"][len(BASE) : -2])
        assert all(o["code"] == 0 for o in outcomes), f"{argv}: exit codes {[o['code'] for o in outcomes]}"
        assert outcomes[0]["summary"]["replicas_identical"], argv
        assert len({o["final"] for o in outcomes}) == 1, f"{argv}: ranks end with different models"
        evaluated = [o["evaluated"] for o in outcomes]
        assert len(evaluated[0]) >= 5, argv  # val + test per epoch, final test
        assert all(e == evaluated[0] for e in evaluated), f"{argv}: ranks evaluated different models"
        for outcome in outcomes:
            meter = outcome["meter"]
            counted = (outcome["rounds"], outcome["collectives"], outcome["bytes"])
            if streams_fragments(outcome["argv"]):
                # A round per fragment, one all-reduce each, and several may share a step (one window of the
                # probe); PostLocalSGD's MBSGD phase before them may take two collectives a round (BatchNorm).
                assert outcome["rounds"] <= meter["comm_rounds"] <= outcome["collectives"], argv
                if "PostLocalSGD" not in outcome["argv"]:
                    assert meter["comm_rounds"] == outcome["collectives"], argv
                counted = (meter["comm_rounds"], *counted[1:])
            assert (meter["comm_rounds"], meter["comm_collectives"], meter["comm_bytes"]) == counted, argv
            assert counted[0] > 0 and counted[2] > 0, argv
            assert 0 <= meter["comm_seconds"] <= meter["comm_inflight_seconds"] + 1e-9, argv


def test_overlapped_round_in_flight_at_epoch_end_is_completed_before_evaluation(tmp_path):
    """The reported case: the last epoch's test loss and the summary's final test loss describe the same model."""
    argv = [
        *BASE,
        "--training-type",
        "PLSGD",
        "--local-steps",
        "3",
        "--overlap",
        "--model",
        "lenet5",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    ranks = run_ranks([argv])
    assert all(outcomes[0]["code"] == 0 for outcomes in ranks)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert rows[-1]["test_loss"] == summary["final_test_loss"]


@pytest.mark.parametrize(
    "training_type,extra",
    [("MBSGD", []), ("PLSGD", ["--local-steps", "3"]), ("PostLocalSGD", ["--local-steps", "3", "--switch-step", "4"])],
)
@pytest.mark.parametrize("on_nan", ["skip", "stop"])
def test_nan_on_one_rank_leads_every_rank_to_the_same_action(training_type, extra, on_nan, tmp_path):
    argv = [
        *BASE,
        "--training-type",
        training_type,
        *extra,
        "--model",
        "resnet20",
        "--on-nan",
        on_nan,
        "--output-dir",
        str(tmp_path / "run"),
    ]
    ranks = run_ranks([argv], inject_nan_at=2)  # rank 1's inputs at step 2 are NaN
    codes = [outcomes[0]["code"] for outcomes in ranks]
    if on_nan == "stop":
        assert codes == [3, 3]
        return
    assert codes == [0, 0]
    assert len({outcomes[0]["final"] for outcomes in ranks}) == 1
    assert ranks[0][0]["summary"]["replicas_identical"]
    if training_type != "PLSGD":  # the gradients were averaged: every rank skipped the step
        assert [outcomes[0]["summary"]["skipped_steps"] for outcomes in ranks] == [1, 1]
