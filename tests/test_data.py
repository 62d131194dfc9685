"""Unit tests of the data path: shards, batched augmentation, loaders, splits and sources.

Samples are made identifiable by giving them labels 0..N-1, so coverage and disjointness
checks read the labels.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dataloaders import (
    DataError,
    EvalBatches,
    Normalizer,
    TrainBatches,
    build_data,
    load_raw,
    shard_indices,
    split_train_val,
)
from dataloaders.loader import PAD, random_crop_flip
from dataloaders.sources import RawData

SHARED_DATA = Path(os.environ.get("SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CPU = torch.device("cpu")


def identity_normalizer(channels):
    """Maps uint8 to [0, 1] only, so outputs can be compared with the raw pixels."""
    return Normalizer(torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1))


def random_images(count, channels=3, height=8, width=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, channels, height, width), generator=generator, dtype=torch.uint8)


def labelled_raw(count, test_count=20, channels=3, size=8):
    """RawData whose training labels are 0..count-1 (one per sample) and test labels count.."""
    return RawData(
        random_images(count, channels, size, size),
        torch.arange(count),
        random_images(test_count, channels, size, size, seed=1),
        torch.arange(count, count + test_count),
        count + test_count,
    )


def reference_crop_flip(images, offsets, flips):
    """Per-image reference: slice the zero-padded image, mirror left-right if asked."""
    height, width = images.shape[2:]
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    out = []
    for image, (dy, dx), flip in zip(padded, offsets.tolist(), flips.tolist()):
        crop = image[:, dy : dy + height, dx : dx + width]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


# ----------------------------------------------------------------------------- shards


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_disjoint_equal_and_cover_all_but_the_remainder(world_size):
    num_samples = 103
    shards = [shard_indices(num_samples, rank, world_size, seed=5, epoch=2) for rank in range(world_size)]
    sizes = {len(shard) for shard in shards}
    assert sizes == {num_samples // world_size}
    union = torch.cat(shards)
    assert len(set(union.tolist())) == len(union)  # disjoint
    assert all(0 <= i < num_samples for i in union.tolist())
    assert num_samples - len(union) < world_size
    assert num_samples - len(union) == num_samples % world_size


def test_shards_repeat_for_the_same_seed_and_epoch():
    for rank in range(3):
        assert torch.equal(shard_indices(100, rank, 3, 7, 4), shard_indices(100, rank, 3, 7, 4))


def test_shards_change_with_epoch_and_seed():
    base = shard_indices(100, 0, 2, 7, 0)
    assert not torch.equal(base, shard_indices(100, 0, 2, 7, 1))
    assert not torch.equal(base, shard_indices(100, 0, 2, 8, 0))


def test_single_rank_shard_is_a_permutation():
    assert sorted(shard_indices(50, 0, 1, 0, 0).tolist()) == list(range(50))


# ----------------------------------------------------------------------------- augmentation


def test_crop_at_pad_offset_without_flip_is_identity():
    images = random_images(6)
    offsets = torch.full((6, 2), PAD)
    out = random_crop_flip(images, offsets, torch.zeros(6, dtype=torch.bool))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, images)


def test_flip_at_pad_offset_mirrors():
    images = random_images(6)
    flips = torch.tensor([True, False, True, False, True, True])
    out = random_crop_flip(images, torch.full((6, 2), PAD), flips)
    assert torch.equal(out[flips], images[flips].flip(-1))
    assert torch.equal(out[~flips], images[~flips])


def test_shift_moves_pixels_and_pads_with_zero():
    images = random_images(1, channels=1, height=5, width=7)
    out = random_crop_flip(images, torch.tensor([[PAD + 1, PAD - 2]]), torch.tensor([False]))
    assert torch.equal(out[0, 0, :-1, 2:], images[0, 0, 1:, :-2])
    assert (out[0, 0, -1, :] == 0).all() and (out[0, 0, :, :2] == 0).all()


@pytest.mark.parametrize("height, width", [(8, 8), (5, 9), (28, 28)])
def test_crop_flip_matches_per_image_reference(height, width):
    generator = torch.Generator().manual_seed(3)
    images = random_images(32, 3, height, width)
    offsets = torch.randint(0, 2 * PAD + 1, (32, 2), generator=generator)
    flips = torch.rand(32, generator=generator) < 0.5
    out = random_crop_flip(images, offsets, flips)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, reference_crop_flip(images, offsets, flips))


# ----------------------------------------------------------------------------- normalizer


def test_normalizer_stats_are_numpy_per_channel_mean_and_std():
    images = random_images(64, channels=3, height=6, width=6)
    normalizer = Normalizer.from_images(images)
    pixels = images.numpy().astype(np.float64) / 255
    assert normalizer.mean.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(normalizer.mean.flatten().numpy(), pixels.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(normalizer.std.flatten().numpy(), pixels.std(axis=(0, 2, 3)), rtol=1e-3)


def test_normalized_train_split_has_zero_mean_unit_std():
    images = random_images(64)
    out = Normalizer.from_images(images)(images)
    assert out.dtype == torch.float32
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_normalizer_of_a_constant_channel_does_not_divide_by_zero():
    images = torch.full((4, 1, 3, 3), 7, dtype=torch.uint8)
    assert torch.isfinite(Normalizer.from_images(images)(images)).all()


# ----------------------------------------------------------------------------- train batches


def train_batches(count=100, batch_size=8, rank=0, world_size=1, seed=0, augment=True, flip=True):
    images = random_images(count)
    return TrainBatches(
        images, torch.arange(count), identity_normalizer(3), batch_size, rank, world_size, seed, augment, flip
    )


def as_lists(batches):
    return [(inputs.clone(), targets.clone()) for inputs, targets in batches]


def same_batches(first, second):
    return len(first) == len(second) and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second)
    )


def test_train_batches_shapes_and_steps():
    loader = train_batches(count=100, batch_size=8, world_size=3)
    assert loader.steps_per_epoch == 100 // 3 // 8
    batches = as_lists(loader.epoch(0))
    assert len(batches) == loader.steps_per_epoch
    for inputs, targets in batches:
        assert inputs.shape == (8, 3, 8, 8) and inputs.dtype == torch.float32
        assert targets.shape == (8,)


def test_train_batches_without_augmentation_are_the_shard():
    loader = train_batches(count=50, batch_size=5, rank=1, world_size=2, seed=3, augment=False)
    batches = as_lists(loader.epoch(4))
    shard = shard_indices(50, 1, 2, 3, 4)
    targets = torch.cat([t for _, t in batches])
    assert torch.equal(targets, shard[: len(targets)])
    inputs = torch.cat([x for x, _ in batches])
    assert torch.equal(inputs, loader.images[targets].float() / 255)


def test_ranks_see_disjoint_samples_in_an_epoch():
    seen = []
    for rank in range(3):
        loader = train_batches(count=90, batch_size=10, rank=rank, world_size=3)
        seen += torch.cat([t for _, t in loader.epoch(1)]).tolist()
    assert len(seen) == len(set(seen)) == 90


def test_augmented_batches_are_seeded():
    loader = train_batches()
    assert same_batches(as_lists(loader.epoch(2)), as_lists(loader.epoch(2)))
    assert same_batches(as_lists(loader.epoch(2)), as_lists(train_batches().epoch(2)))


def test_augmented_batches_change_with_epoch_and_seed():
    loader = train_batches()
    assert not same_batches(as_lists(loader.epoch(2)), as_lists(loader.epoch(3)))
    assert not same_batches(as_lists(loader.epoch(2)), as_lists(train_batches(seed=1).epoch(2)))


def test_augmentation_of_the_same_samples_changes_with_epoch():
    # Same samples (one rank, batch = the whole set, labels sorted), different crops/flips.
    loader = train_batches(count=64, batch_size=64)
    epochs = []
    for epoch in (0, 1):
        inputs, targets = next(loader.epoch(epoch))
        epochs.append(inputs[targets.argsort()])
    assert not torch.equal(epochs[0], epochs[1])


@pytest.mark.parametrize("start_step", [0, 1, 5, 11])
def test_resume_mid_epoch_gives_the_tail_of_the_epoch(start_step):
    loader = train_batches(count=100, batch_size=8)
    full = as_lists(loader.epoch(3))
    assert len(full) == 12
    assert same_batches(as_lists(loader.epoch(3, start_step=start_step)), full[start_step:])


def test_resume_at_the_end_of_an_epoch_yields_nothing():
    loader = train_batches(count=100, batch_size=8)
    assert as_lists(loader.epoch(0, start_step=loader.steps_per_epoch)) == []


def crops_of(image, flipped):
    """All (2*PAD+1)^2 crops of one image, mirrored if ``flipped``."""
    count = (2 * PAD + 1) ** 2
    offsets = torch.stack(
        torch.meshgrid(torch.arange(2 * PAD + 1), torch.arange(2 * PAD + 1), indexing="ij"), -1
    ).reshape(-1, 2)
    return random_crop_flip(image.expand(count, -1, -1, -1), offsets, torch.full((count,), flipped))


def flip_count(loader, epoch):
    """How many augmented images are a mirrored crop of their source (and no unmirrored crop)."""
    flipped = 0
    for inputs, targets in loader.epoch(epoch):
        for augmented, index in zip((inputs * 255).round().to(torch.uint8), targets.tolist()):
            source = loader.images[index : index + 1]
            plain = bool((crops_of(source, False) == augmented).flatten(1).all(1).any())
            mirrored = bool((crops_of(source, True) == augmented).flatten(1).all(1).any())
            assert plain or mirrored, "an augmented image is no crop of its source"
            flipped += int(mirrored and not plain)
    return flipped


def test_flip_off_only_crops():
    assert flip_count(train_batches(count=16, batch_size=16, flip=False), epoch=0) == 0


def test_flip_on_mirrors_about_half():
    assert 3 <= flip_count(train_batches(count=16, batch_size=16, flip=True), epoch=0) <= 13


# ----------------------------------------------------------------------------- eval batches


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("count", [103, 3, 0])
def test_eval_slices_cover_every_sample_once(world_size, count):
    images, labels = random_images(count), torch.arange(count)
    seen = []
    for rank in range(world_size):
        loader = EvalBatches(images, labels, identity_normalizer(3), 10, rank, world_size)
        assert loader.total == count
        for inputs, targets in loader:
            assert 1 <= len(targets) <= 10
            assert torch.equal(inputs, images[targets].float() / 255)
            seen += targets.tolist()
    assert seen == list(range(count))


def test_eval_slices_are_balanced():
    sizes = [
        len(EvalBatches(random_images(10), torch.arange(10), identity_normalizer(3), 4, rank, 4).labels)
        for rank in range(4)
    ]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 10


# ----------------------------------------------------------------------------- train/val split


def test_split_is_disjoint_and_covers_the_training_data():
    raw = labelled_raw(200)
    (train_images, train_labels), (val_images, val_labels) = split_train_val(raw, 0.1, seed=0)
    assert len(val_labels) == 20 and len(train_labels) == 180
    assert set(train_labels.tolist()).isdisjoint(val_labels.tolist())
    assert sorted(train_labels.tolist() + val_labels.tolist()) == list(range(200))
    assert torch.equal(train_images, raw.train_images[train_labels])
    assert torch.equal(val_images, raw.train_images[val_labels])


def test_split_is_seeded():
    raw = labelled_raw(200)
    first = split_train_val(raw, 0.1, seed=4)[1][1]
    assert torch.equal(first, split_train_val(raw, 0.1, seed=4)[1][1])
    assert not torch.equal(first, split_train_val(raw, 0.1, seed=5)[1][1])


def test_split_keeps_at_least_one_validation_sample():
    assert len(split_train_val(labelled_raw(20), 0.01, seed=0)[1][1]) == 1


def tiny_build(rank=0, world_size=2, **overrides):
    settings = dict(
        dataset="synthetic",
        data_dir="unused",
        download=False,
        synthetic_size=200,
        test_ratio=0.1,
        val_ratio=0.1,
        batch_size=16,
        eval_batch_size=50,
        augment=True,
        seed=3,
        rank=rank,
        world_size=world_size,
        device=CPU,
    )
    settings.update(overrides)
    return build_data(**settings)


def test_build_data_split_is_the_same_on_every_rank():
    ranks = [tiny_build(rank=rank) for rank in range(2)]
    assert torch.equal(ranks[0].train.images, ranks[1].train.images)
    assert torch.equal(ranks[0].train.normalizer.mean, ranks[1].train.normalizer.mean)
    raw = load_raw("synthetic", "unused", False, 200, 0.1, 3)
    (train_images, _), (val_images, _) = split_train_val(raw, 0.1, 3)
    assert torch.equal(ranks[0].train.images, train_images)
    assert torch.equal(torch.cat([ranks[0].val.images, ranks[1].val.images]), val_images)
    assert torch.equal(torch.cat([ranks[0].test.images, ranks[1].test.images]), raw.test_images)


def test_build_data_normalizes_with_train_split_statistics():
    data = tiny_build(rank=0, world_size=1)
    expected = Normalizer.from_images(data.train.images)
    assert torch.equal(data.train.normalizer.mean, expected.mean)
    assert torch.equal(data.train.normalizer.std, expected.std)
    assert torch.equal(data.val.normalizer.mean, expected.mean)
    assert torch.equal(data.test.normalizer.std, expected.std)


def test_build_data_shape_fields():
    data = tiny_build(rank=0, world_size=1)
    assert (data.channels, data.image_size, data.num_classes, data.train_size) == (3, 32, 10, 180)
    assert data.train.steps_per_epoch == 180 // 16


def test_build_data_mnist_is_not_flipped(monkeypatch):
    raw = RawData(
        random_images(100, 1, 28, 28), torch.arange(100) % 10, random_images(10, 1, 28, 28), torch.arange(10), 10
    )
    monkeypatch.setattr("dataloaders.load_raw", lambda *args: raw)
    assert tiny_build(dataset="mnist", world_size=1).train.flip is False
    assert tiny_build(dataset="synthetic", world_size=1).train.flip is True


def test_build_data_rejects_shard_smaller_than_a_batch():
    with pytest.raises(DataError, match="batch"):
        tiny_build(world_size=4, batch_size=64)  # 180 training images / 4 ranks = 45 < 64
