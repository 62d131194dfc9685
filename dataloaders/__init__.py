"""Data for one rank: a seeded train/validation split, train-split statistics, shards and batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dataloaders.loader import EvalBatches, Normalizer, TrainBatches, shard_indices, to_device  # noqa: F401
from dataloaders.partition import dirichlet_shards
from dataloaders.sources import DataError, RawData, load_raw  # noqa: F401


@dataclass
class Data:
    train: TrainBatches
    val: EvalBatches
    test: EvalBatches
    channels: int
    image_size: int
    num_classes: int
    train_size: int


def split_train_val(raw: RawData, val_ratio: float, seed: int):
    """Seeded split of the training data, the same on every rank (it depends on the seed only)."""
    order = torch.randperm(len(raw.train_images), generator=torch.Generator().manual_seed(seed + 1))
    val_count = max(1, int(round(len(order) * val_ratio)))
    val, train = order[:val_count], order[val_count:]
    return (raw.train_images[train], raw.train_labels[train]), (raw.train_images[val], raw.train_labels[val])


def build_data(dataset: str, data_dir: str, download: bool, synthetic_size: int, test_ratio: float,
               val_ratio: float, batch_size: int, eval_batch_size: int, augment: bool, seed: int,
               rank: int, world_size: int, device: torch.device, dirichlet_alpha: float = 0.0) -> Data:
    """``dirichlet_alpha`` > 0 gives label-skewed non-iid shards (dataloaders.partition); 0 gives iid shards."""
    raw = load_raw(dataset, data_dir, download, synthetic_size, test_ratio, seed)
    (train_images, train_labels), (val_images, val_labels) = split_train_val(raw, val_ratio, seed)
    shard_size = len(train_images) // world_size
    if shard_size < batch_size:
        raise DataError(f"each of the {world_size} ranks gets {shard_size} training images, fewer than one batch of "
                        f"{batch_size}; lower --batch-size or the number of ranks")
    normalizer = Normalizer.from_images(train_images).to(device)
    # The whole data set is copied to the device once (on a GPU it stays there: no per-batch copies).
    on_device = lambda tensor: to_device(tensor, device)  # noqa: E731
    # Mirroring digits makes other symbols (a flipped 2 is no 2), so MNIST is only cropped.
    flip = dataset != "mnist"
    fixed_shard = dirichlet_shards(train_labels, world_size, dirichlet_alpha, seed)[rank] if dirichlet_alpha else None
    train = TrainBatches(on_device(train_images), on_device(train_labels), normalizer, batch_size, rank, world_size,
                         seed, augment, flip, fixed_shard)
    val = EvalBatches(on_device(val_images), on_device(val_labels), normalizer, eval_batch_size, rank, world_size)
    test = EvalBatches(on_device(raw.test_images), on_device(raw.test_labels), normalizer, eval_batch_size, rank,
                       world_size)
    channels, image_size = train_images.shape[1], train_images.shape[2]
    return Data(train, val, test, channels, image_size, raw.num_classes, len(train_images))
