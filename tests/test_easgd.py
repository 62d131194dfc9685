"""EASGD: the elastic round against the paper's equations on real Gloo ranks, its options, and a run that learns.

The hand-computed case (2 ranks, alpha = 0.25, so p * alpha = 0.5; every number exact in float32):
    center x~ = [1, 2]; before round 1 the replicas are x_0 = [3, 2], x_1 = [1, 6]
    eq. (5): x_0 <- x_0 - alpha (x_0 - x~) = [2.5, 2],   x_1 <- [1, 5]
    eq. (6): x~ <- x~ + alpha * sum_i (x_i - x~) = [1, 2] + 0.25 * ([2, 0] + [0, 4]) = [1.5, 3]
    round 2, replicas unmoved: x_0 <- [2.25, 2.25], x_1 <- [1.125, 4.5], x~ <- [1.5, 3] + 0.25 * [0.5, 1] = [1.625, 3.25]
"""

import pytest
import torch
from torch import nn

import main
from tests.harness import LEARN_ARGS, TINY, check_ok, run_main, spawn_ranks, summary
from train.sync.easgd import EASGD
from utilities.distributed import CommMeter

START = [1.0, 2.0]  # rank 0's weights; prepare() broadcasts them, so they are every replica's and the center's
MOVED = {0: [3.0, 2.0], 1: [1.0, 6.0]}  # where each rank's local steps took its replica before round 1
AFTER_ROUND_1 = {0: [2.5, 2.0], 1: [1.0, 5.0]}
AFTER_ROUND_2 = {0: [2.25, 2.25], 1: [1.125, 4.5]}
CENTER_1, CENTER_2 = [1.5, 3.0], [1.625, 3.25]


def _elastic_rounds(rank, world_size):
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([START if rank == 0 else [9.0, 9.0]]))
    meter = CommMeter()
    sync = EASGD(meter, local_steps=2, elastic_alpha=0.25, ranks=world_size)
    sync.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    weight = lambda: model.weight.detach().reshape(-1).tolist()  # noqa: E731
    seen = {"start": weight()}
    with torch.no_grad():
        model.weight.copy_(torch.tensor([MOVED[rank]]))
    sync.after_step(0)
    seen["between"] = weight()  # one of two local steps: no round yet
    sync.after_step(1)
    seen["round1"], seen["center1"] = weight(), sync.center.tolist()
    sync.after_step(2)
    sync.after_step(3)
    seen["round2"], seen["center2"] = weight(), sync.center.tolist()
    with sync.eval_model() as evaluated:
        seen["evaluated"] = evaluated.weight.detach().reshape(-1).tolist()
    seen["after_eval"] = weight()
    sync.finish()
    seen["final"] = weight()
    seen["meter"] = {k: v for k, v in meter.snapshot().items() if not k.endswith("seconds")}
    return seen


def test_elastic_round_follows_the_paper_on_two_ranks():
    results = spawn_ranks(_elastic_rounds, 2)
    for rank, seen in enumerate(results):
        assert seen["start"] == START
        assert seen["between"] == MOVED[rank]
        assert seen["round1"] == AFTER_ROUND_1[rank] and seen["center1"] == CENTER_1
        assert seen["round2"] == AFTER_ROUND_2[rank] and seen["center2"] == CENTER_2
        assert seen["evaluated"] == CENTER_2  # the center is evaluated ...
        assert seen["after_eval"] == AFTER_ROUND_2[rank]  # ... and the replica is back afterwards
        assert seen["final"] == CENTER_2  # finish(): no steps since the last round, every rank holds the center
        # One flat all-reduce of 2 float32 per round.
        assert seen["meter"] == {"comm_rounds": 2, "comm_collectives": 2, "comm_bytes": 16}


def test_default_alpha_is_the_papers_beta_over_p_and_the_center_resumes_exactly():
    assert EASGD(CommMeter(), 4, 0.0, ranks=4).alpha == pytest.approx(0.9 / 4)
    model = nn.Linear(3, 2)
    sync = EASGD(CommMeter(), 1, 0.5)
    sync.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with torch.no_grad():
        model.weight.add_(1.0)
    sync.after_step(0)  # one process: the center moves halfway to the replica
    saved = sync.state_dict()
    fresh = EASGD(CommMeter(), 1, 0.5)
    fresh.prepare(nn.Linear(3, 2), torch.optim.SGD(model.parameters(), lr=0.1))
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.center, sync.center) and not torch.equal(fresh.center, fresh.state.gather())


@pytest.mark.parametrize(
    "extra,named",
    [
        (["--elastic-alpha", "1.5"], "--elastic-alpha"),
        (["--elastic-alpha", "nan"], "--elastic-alpha"),
        (["--elastic-alpha", "-0.1"], "--elastic-alpha"),
        (["--overlap"], "--overlap"),
        (["--sync-dtype", "bf16"], "--sync-dtype"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(extra, named, tmp_path, capsys):
    code = main.main([*TINY, "--training-type", "EASGD", *extra, "--output-dir", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_two_ranks_learn_and_end_with_the_center_on_every_rank(tmp_path):
    check_ok(
        run_main(
            [*LEARN_ARGS, "--training-type", "EASGD", "--local-steps", "4", "--output-dir", str(tmp_path / "run")],
            nproc=2,
        )
    )
    result = summary(tmp_path / "run")
    assert result["replicas_identical"]
    assert result["final_test_accuracy"] > 0.5  # the synthetic set has 10 classes: chance is 0.1
    assert result["comm_rounds"] == result["steps"] // 4 + (result["steps"] % 4 > 0)
