"""Hidden communication: --overlap-steps auto and streamed fragments (--fragments), on real Gloo ranks."""

import json

import torch

from tests.harness import LEARN_ARGS, check_ok, run_main, spawn_ranks, summary, tiny_model, train_steps
from train.sync.averaging import MIN_FRAGMENT_ELEMENTS, automatic_fragments
from train.sync.fragments import split_pieces
from train.sync.overlap_depth import AutoDepth
from train.sync.plsgd import PLSGD
from train.sync.slowmo import DiLoCo, SlowMo
from utilities.distributed import CommMeter


def test_split_pieces_covers_every_element_once_in_near_equal_parts():
    sizes = [5, 3, 10]
    parts = split_pieces(sizes, 3)
    assert [sum(stop - start for _, start, stop in part) for part in parts] == [6, 6, 6]
    covered = sorted(
        (index, element) for part in parts for index, start, stop in part for element in range(start, stop)
    )
    assert covered == [(index, element) for index, size in enumerate(sizes) for element in range(size)]


def test_auto_depth_picks_the_fewest_steps_that_hid_the_round():
    depth = AutoDepth(initial=7)
    for _ in range(4):
        depth.record_step(0.1)
    depth.record_round(7, done_after=3, waited=0.0)  # seen done after 3 steps
    assert depth.proposal() == 3
    depth.record_round(2, done_after=None, waited=0.25)  # exposed: 2 steps + 0.25 s of 0.1 s steps
    assert depth.proposal() == 5
    for _ in range(3):
        depth.record_round(3, done_after=3, waited=0.0)
    assert depth.proposal() == 3  # the slow round has left the window
    depth.record_round(3, done_after=None, waited=0.001)  # timer noise is no exposure
    assert depth.proposal() == 3
    depth.adopt(3.0)
    assert depth.depth == 3


def test_auto_depth_remembers_three_periods_of_fragment_rounds():
    depth = AutoDepth(initial=8)
    depth.set_rounds_per_period(4)  # 4 fragments: 4 rounds a period, 12 remembered
    depth.record_round(8, done_after=5, waited=0.0)
    for _ in range(11):
        depth.record_round(1, done_after=1, waited=0.0)
    assert depth.proposal() == 5  # the slow round of 3 periods ago still counts...
    depth.record_round(1, done_after=1, waited=0.0)
    assert depth.proposal() == 1  # ...and then leaves the window


def flat_state(model) -> torch.Tensor:
    return torch.cat(
        [t.detach().reshape(-1) for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    )


def _fragments(rank, world_size):
    results = {}
    for name, build in {
        "plsgd": lambda m: PLSGD(m, 4, overlap=True, overlap_steps="auto", fragments=2),
        "plsgd_bf16": lambda m: PLSGD(m, 4, overlap=True, overlap_steps="auto", fragments=2, sync_dtype="bf16"),
        "blocking": lambda m: PLSGD(m, 4, fragments=2),
        "slowmo_plain": lambda m: SlowMo(m, 4, 0.0, 1.0, fragments=2),
        "slowmo": lambda m: SlowMo(m, 4, 0.5, 1.0, overlap=True, overlap_steps="auto", fragments=2),
        "diloco": lambda m: DiLoCo(m, 4, overlap=True, overlap_steps="auto", fragments=2),
    }.items():
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        meter = CommMeter()
        sync = build(meter)
        train_steps(sync, model, optimizer, rank, 10)
        sync.finish()
        mine = flat_state(model)
        everyone = [torch.empty_like(mine) for _ in range(world_size)]
        torch.distributed.all_gather(everyone, mine)
        results[name] = (
            all(torch.equal(everyone[0], other) for other in everyone),
            meter.rounds,
            meter.collectives,
            meter.bytes,
            mine,
            [f.averager.state.flat.numel() for f in sync.streamer.fragments],
        )
    return results


def test_fragments_average_at_staggered_steps_count_exactly_and_end_identical():
    for result in spawn_ranks(_fragments, 2):
        for name, (identical, rounds, collectives, sent, _, sizes) in result.items():
            assert identical, name
            # J=4, F=2: fragment 0 at steps 4, 8; fragment 1 at 2, 6, 10; at the end fragment 0 is 2 steps behind.
            assert (rounds, collectives) == (6, 6), name
            whole = sum(sizes)
            assert abs(sizes[0] - sizes[1]) <= 1, name
            if name == "blocking" or name.startswith("slowmo_plain"):
                assert sent == 4 * (3 * sizes[0] + 3 * sizes[1]), name
            elif name == "plsgd_bf16":  # overlapped with the automatic depth: one element carries it
                assert sent == 2 * (2 * (sizes[0] + 1) + sizes[0] + 3 * (sizes[1] + 1)), name
            else:
                assert sent == 4 * (2 * (sizes[0] + 1) + sizes[0] + 3 * (sizes[1] + 1)), name
            assert whole == result["plsgd"][4].numel()
        # SlowMo with beta = 0, alpha = 1 is local SGD, fragment by fragment too.
        assert torch.allclose(result["slowmo_plain"][4], result["blocking"][4], atol=1e-6)


def test_auto_depth_and_fragments_keep_accuracy_of_blocking_averaging(tmp_path):
    args = [*LEARN_ARGS, "--training-type", "PLSGD", "--local-steps", "4"]
    runs = {
        "blocking": [],
        "whole": ["--overlap", "--fragments", "1"],
        "fragments": ["--overlap", "--fragments", "2"],
        "plain": ["--overlap"],  # --fragments auto: min(J, 8) fragments, fewer for a small state
    }
    for name, extra in runs.items():
        check_ok(run_main([*args, *extra, "--output-dir", str(tmp_path / name)], nproc=2))
    blocking = summary(tmp_path / "blocking")
    counts = {}
    for name in ("whole", "fragments", "plain"):
        result = summary(tmp_path / name)
        assert result["replicas_identical"], name
        assert abs(result["final_test_accuracy"] - blocking["final_test_accuracy"]) < 0.08, name
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert all(1 <= row["overlap_steps"] <= 4 for row in rows), name
        counts[name] = rows[0]["fragments"]
    whole = summary(tmp_path / "whole")  # every round: the flat state and the depth element, in fp32
    state = whole["comm_bytes"] // whole["comm_rounds"] // 4 - 1
    assert counts == {"whole": 1, "fragments": 2, "plain": min(4, state // MIN_FRAGMENT_ELEMENTS)}
    assert counts["plain"] > 1
    assert summary(tmp_path / "whole")["comm_rounds"] == blocking["comm_rounds"]
    # F fragments: F rounds of 1/F of the state where blocking has one of the whole state; at the end the
    # fragments not averaged at the last step get one round each.
    for name in ("fragments", "plain"):
        rounds = summary(tmp_path / name)["comm_rounds"]
        assert abs(counts[name] * blocking["comm_rounds"] - rounds) <= counts[name] - 1, name


def test_fragments_auto_streams_min_j_and_8_under_overlap_and_the_whole_state_otherwise():
    assert [automatic_fragments(True, j, None, "local") for j in (1, 3, 8, 32)] == [1, 3, 8, 8]
    assert automatic_fragments(False, 8, None, "local") == 1  # blocking rounds: one for the whole state
    assert automatic_fragments(True, 8, (2, 8), "local") == 1  # hierarchy: no fragments
    assert automatic_fragments(True, 8, None, "average") == 1  # fragments keep momentum local
    assert PLSGD(CommMeter(), 8, overlap=True, momentum_sync="reset").fragments == 1
    assert PLSGD(CommMeter(), 8, overlap=True).fragments == 8
    assert PLSGD(CommMeter(), 8).fragments == 1


def _automatic_count(rank, world_size, layers):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(layers)])  # 16,512 elements a layer
    sync = PLSGD(CommMeter(), 8, overlap=True)
    sync.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return sync.fragments, len(sync.streamer.fragments) if sync.streamer is not None else 1


def test_fragments_auto_gives_a_small_state_fewer_fragments_of_at_least_64_kb():
    for layers, expected in ((1, 1), (3, 3), (12, 8)):
        assert spawn_ranks(_automatic_count, 2, layers) == [(expected, expected)] * 2, layers
