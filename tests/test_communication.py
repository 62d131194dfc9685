"""Communication options: overlapped averaging, reduced-precision sync with error feedback,
hierarchical averaging, and compressed MBSGD gradients, on real Gloo ranks."""

import torch
import torch.distributed as dist

from tests.harness import LEARN_ARGS, check_ok, run_main, spawn_ranks, summary, tiny_model, train_steps
from train.sync.plsgd import PLSGD
from utilities.distributed import CommMeter


def flat_parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _reduced_precision(rank, world_size):
    results = {}
    for dtype in ("fp32", "bf16"):
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        meter = CommMeter()
        identical = []
        train_steps(PLSGD(meter, 3, sync_dtype=dtype), model, optimizer, rank, 12, identical)
        results[dtype] = (identical, meter.bytes, flat_parameters(model))
    return results


def test_bf16_sync_sends_half_the_bytes_keeps_replicas_identical_and_tracks_fp32():
    for result in spawn_ranks(_reduced_precision, 2):
        identical, bf16_bytes, bf16_params = result["bf16"]
        _, fp32_bytes, fp32_params = result["fp32"]
        assert identical == [(step + 1) % 3 == 0 for step in range(12)]
        assert bf16_bytes * 2 == fp32_bytes
        # Error feedback keeps the bf16 trajectory close to the fp32 one.
        assert (bf16_params - fp32_params).abs().max() < 1e-2


def _hierarchy(rank, world_size):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meter = CommMeter()
    sync = PLSGD(meter, 1, hierarchy=(2, 6), ranks_per_node=2)
    trained = sync.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(1000 + rank)
    gathered_per_step = []
    for step in range(6):
        inputs, targets = torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        torch.nn.functional.cross_entropy(trained(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
        sync.after_step(step)
        mine = flat_parameters(model)
        everyone = [torch.empty_like(mine) for _ in range(world_size)]
        dist.all_gather(everyone, mine)
        gathered_per_step.append([torch.equal(everyone[0], other) for other in everyone])
    return gathered_per_step, meter.rounds


def test_hierarchy_averages_within_nodes_often_and_across_nodes_rarely():
    results = spawn_ranks(_hierarchy, 4)  # ranks 0,1 form node 0; ranks 2,3 node 1
    equal_to_rank0, rounds = results[0]
    for step, equal in enumerate(equal_to_rank0):
        if (step + 1) % 6 == 0:
            assert equal == [True] * 4, step  # global round
        elif (step + 1) % 2 == 0:
            assert equal == [True, True, False, False], step  # node round: same node only
        else:
            assert equal == [True, False, False, False], step
    assert rounds == 3  # node rounds at steps 2 and 4, the global one at 6


def test_overlap_keeps_accuracy_of_blocking_averaging(tmp_path):
    args = [*LEARN_ARGS, "--training-type", "PLSGD", "--local-steps", "4"]
    check_ok(run_main([*args, "--output-dir", str(tmp_path / "blocking")], nproc=2))
    check_ok(
        run_main(
            [*args, "--overlap", "--overlap-steps", "2", "--fragments", "1", "--output-dir", str(tmp_path / "overlap")],
            nproc=2,
        )
    )
    blocking, overlap = summary(tmp_path / "blocking"), summary(tmp_path / "overlap")
    assert overlap["replicas_identical"]
    assert overlap["comm_rounds"] == blocking["comm_rounds"]
    assert abs(overlap["final_test_accuracy"] - blocking["final_test_accuracy"]) < 0.08


def test_gradient_compression_hooks_cut_mbsgd_bytes(tmp_path):
    args = [*LEARN_ARGS, "--training-type", "MBSGD", "--epochs", "1"]
    for compression in ("none", "fp16", "powersgd"):
        check_ok(
            run_main([*args, "--grad-compression", compression, "--output-dir", str(tmp_path / compression)], nproc=2)
        )
    fp32, fp16, powersgd = (summary(tmp_path / name) for name in ("none", "fp16", "powersgd"))
    assert fp16["comm_bytes"] * 2 == fp32["comm_bytes"]
    assert fp16["replicas_identical"] and fp16["final_test_accuracy"] > 0.5
    # PowerSGD: 10 plain steps, then rank-2 factors of the MLP's matrices plus its biases.
    assert powersgd["comm_bytes"] < fp32["comm_bytes"] / 5
    assert powersgd["comm_rounds"] == fp32["comm_rounds"] and powersgd["comm_collectives"] > fp32["comm_collectives"]
    assert powersgd["replicas_identical"] and powersgd["final_test_accuracy"] > 0.3
