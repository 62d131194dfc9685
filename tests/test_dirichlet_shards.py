"""Non-iid Dirichlet shards: equal, disjoint, skewed by alpha, and usable end to end."""

import numpy as np
import pytest
import torch

from dataloaders import build_data
from dataloaders.dirichlet_shards import dirichlet_shards
from tests.harness import TINY, check_ok, run_main, summary

LABELS = torch.arange(10).repeat_interleave(600)[torch.randperm(6000, generator=torch.Generator().manual_seed(3))]


def dominant_share(shard) -> float:
    counts = np.bincount(LABELS[shard].numpy(), minlength=10)
    return counts.max() / counts.sum()


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_shards_are_equal_disjoint_and_within_the_data(world_size):
    shards = dirichlet_shards(LABELS, world_size, 0.3, seed=0)
    assert {len(shard) for shard in shards} == {6000 // world_size}
    joined = torch.cat(shards)
    assert len(joined.unique()) == len(joined) and joined.min() >= 0 and joined.max() < 6000


def test_small_alpha_skews_labels_large_alpha_is_nearly_iid():
    skewed = [dominant_share(shard) for shard in dirichlet_shards(LABELS, 4, 0.1, seed=0)]
    balanced = [dominant_share(shard) for shard in dirichlet_shards(LABELS, 4, 1000.0, seed=0)]
    assert min(skewed) > 0.3  # one class dominates every rank's shard
    assert max(balanced) < 0.15  # close to the iid 0.1


def test_shards_are_seeded():
    first, second = dirichlet_shards(LABELS, 2, 0.5, seed=4), dirichlet_shards(LABELS, 2, 0.5, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], dirichlet_shards(LABELS, 2, 0.5, seed=5)[0])


def test_a_rank_trains_only_on_its_fixed_shard_in_a_new_order_each_epoch():
    data = build_data(
        "synthetic",
        synthetic_size=2000,
        batch_size=32,
        eval_batch_size=500,
        augment=False,
        rank=1,
        world_size=2,
        dirichlet_alpha=0.2,
    )
    first, second = data.train.shard(0), data.train.shard(1)
    assert torch.equal(first.sort().values, second.sort().values) and not torch.equal(first, second)
    assert data.train.steps_per_epoch == len(first) // 32


def test_plsgd_on_non_iid_shards_end_to_end(tmp_path):
    check_ok(
        run_main(
            [
                *TINY,
                "--training-type",
                "PLSGD",
                "--local-steps",
                "4",
                "--dirichlet-alpha",
                "0.3",
                "--output-dir",
                str(tmp_path),
            ],
            nproc=2,
        )
    )
    assert summary(tmp_path)["replicas_identical"]
