"""Hidden communication: --overlap-steps auto and streamed fragments (--fragments), on real Gloo ranks."""

import json

import torch

from tests.harness import LEARN_ARGS, check_ok, run_main, spawn_ranks, summary, tiny_model, train_steps
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
    runs = {"blocking": [], "auto": ["--overlap"], "fragments": ["--overlap", "--fragments", "2"]}
    for name, extra in runs.items():
        check_ok(run_main([*args, *extra, "--output-dir", str(tmp_path / name)], nproc=2))
    blocking = summary(tmp_path / "blocking")
    for name in ("auto", "fragments"):
        result = summary(tmp_path / name)
        assert result["replicas_identical"], name
        assert abs(result["final_test_accuracy"] - blocking["final_test_accuracy"]) < 0.08, name
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert all(1 <= row["overlap_steps"] <= 3 for row in rows), name
    assert summary(tmp_path / "auto")["comm_rounds"] == blocking["comm_rounds"]
    # Two fragments: two rounds of half the state where blocking has one of the whole state.
    assert abs(summary(tmp_path / "fragments")["comm_rounds"] - 2 * blocking["comm_rounds"]) <= 1
