"""LAPSGD and LPPSGD: balanced partitions, workers confined to their block, non-blocking averaging."""

import time

import pytest
import torch
import torch.distributed as dist

from dataloaders import build_data
from models import build_model
from tests.harness import LEARN_ARGS, check_ok, metrics, run_main, spawn_ranks, summary
from train.schedules import Schedule
from train.sync.hogwild import LAPSGD
from train.sync.hogwild_worker import hogwild_step
from train.sync.layer_blocks import balanced_blocks
from utilities.distributed import CommMeter, replicas_identical


@pytest.mark.parametrize("model_name", ["resnet20", "resnet18", "lenet5w", "vgg11"])
@pytest.mark.parametrize("workers", [2, 3, 4])
def test_blocks_are_non_empty_cover_the_model_and_are_balanced(model_name, workers):
    sizes = [p.numel() for p in build_model(model_name, 3, 32, 10).parameters()]
    blocks = balanced_blocks(sizes, workers)
    assert len(blocks) == workers
    assert blocks[0][0] == 0 and blocks[-1][1] == len(sizes)
    assert all(stop > start for start, stop in blocks)
    assert all(blocks[i][1] == blocks[i + 1][0] for i in range(workers - 1))  # contiguous, no gaps or overlaps
    totals = [sum(sizes[start:stop]) for start, stop in blocks]
    # Whole tensors cannot always be cut evenly; never worse than ideal plus the largest tensor.
    assert max(totals) <= sum(sizes) / workers + max(sizes)
    assert min(totals) > 0


def test_balanced_blocks_beat_an_equal_tensor_count_split_on_resnet20():
    sizes = [p.numel() for p in build_model("resnet20", 3, 32, 10).parameters()]
    per_block = len(sizes) // 4
    naive = [sum(sizes[i * per_block : (i + 1) * per_block if i < 3 else len(sizes)]) for i in range(4)]
    balanced = [sum(sizes[a:b]) for a, b in balanced_blocks(sizes, 4)]
    assert max(balanced) < max(naive) and min(balanced) > min(naive)


def test_balanced_blocks_rejects_more_workers_than_tensors():
    with pytest.raises(ValueError, match="fewer workers"):
        balanced_blocks([3, 4], 3)


def test_a_partitioned_step_changes_only_its_block():
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 28, 10)
    parameters = list(model.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in parameters]
    block = (2, 5)
    hogwild_step(model, optimizer, torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)), parameters, block)
    for index, (old, new) in enumerate(zip(before, parameters)):
        changed = not torch.equal(old, new.detach())
        assert changed == (block[0] <= index < block[1]), index
    # Partial backpropagation: no gradient was even computed outside the block.
    assert all(p.grad is None for p in parameters)


def _slow_all_reduce(tensor, *args, **kwargs):
    dist.all_reduce(tensor, *args, **kwargs)
    time.sleep(0.3)  # a slow link: the workers must keep stepping meanwhile


def _lapsgd_with_slow_link(rank, world_size):
    data = build_data(
        "synthetic", synthetic_size=2000, batch_size=16, eval_batch_size=500, rank=rank, world_size=world_size
    )
    model = build_model("mlp", 3, 32, 10)
    kwargs = {"lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
    sync = LAPSGD(CommMeter(), 4, 2, "sgd", kwargs, Schedule(0.05, 1000, kind="constant"), all_reduce=_slow_all_reduce)
    sync.prepare(model, torch.optim.SGD(model.parameters(), lr=0.05))
    figures = sync.train_epoch(0, data.train, torch.device("cpu"))
    sync.finish()
    return figures["node_steps_during_sync"], sync.meter.rounds, figures["step"], replicas_identical(model)


def test_workers_keep_training_while_an_averaging_round_is_in_flight():
    for steps_during_sync, rounds, node_steps, identical in spawn_ranks(_lapsgd_with_slow_link, 2):
        assert steps_during_sync > 0
        assert rounds in (node_steps // 4, node_steps // 4 + 1)
        assert identical


LEARN = [*LEARN_ARGS, "--workers-per-node", "2", "--local-steps", "4"]


@pytest.mark.parametrize("training_type", ["LAPSGD", "LPPSGD"])
def test_two_ranks_of_two_workers_learn_and_end_identical(tmp_path, training_type):
    check_ok(run_main([*LEARN, "--training-type", training_type, "--output-dir", str(tmp_path)], nproc=2))
    result = summary(tmp_path)
    assert result["training_type"] == training_type and result["world_size"] == 2
    assert result["replicas_identical"]
    assert result["final_test_accuracy"] > 0.5
    steps = result["steps"]  # node steps: both workers' steps counted together
    assert result["comm_rounds"] in (steps // 4, steps // 4 + 1)
    assert all("node_steps_during_sync" in row for row in metrics(tmp_path))
