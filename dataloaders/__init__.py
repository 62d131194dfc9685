"""Data for one rank: a seeded train/validation split, train-split statistics, shards and batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dataloaders.dirichlet_shards import dirichlet_shards
from dataloaders.imagenet import FolderEvalBatches, FolderTrainBatches, imagenet_splits
from dataloaders.loader import EvalBatches, Normalizer, TrainBatches, shard_indices, to_device  # noqa: F401
from dataloaders.sources import IN_MEMORY_SOURCES, DataError, RawData, load_raw  # noqa: F401
from dataloaders.validate import check_shards

DATASET_NAMES = (*IN_MEMORY_SOURCES, "imagenet")  # imagenet: decoded from image folders, see build_imagenet


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


# The run settings build_data reads under the same names (main.py passes them from the config).
DATA_SETTINGS = (
    "data_dir",
    "download",
    "synthetic_size",
    "test_ratio",
    "val_ratio",
    "batch_size",
    "eval_batch_size",
    "augment",
    "seed",
    "dirichlet_alpha",
    "imagenet_dir",
    "image_size",
    "loader_workers",
)


def build_data(
    dataset: str,
    *,
    batch_size: int,
    data_dir: str = ".",
    download: bool = False,
    synthetic_size: int = 10000,
    test_ratio: float = 0.1,
    val_ratio: float = 0.1,
    eval_batch_size: int = 256,
    augment: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device = torch.device("cpu"),
    dirichlet_alpha: float = 0.0,
    imagenet_dir: str = "",
    image_size: int = 224,
    loader_workers: int = 4,
    local_rank: int = 0,
    workers_per_rank: int = 1,
    wait_seconds: float = 300.0,
) -> Data:
    """The train/val/test splits of ``dataset``, with this rank's shard of the training split.
    ``dirichlet_alpha`` > 0 gives label-skewed non-iid shards (dataloaders.dirichlet_shards); 0 gives iid shards.
    ``imagenet_dir``, ``image_size`` and ``loader_workers`` are for ``dataset='imagenet'`` only.
    ``workers_per_rank`` Hogwild workers split a rank's shard; ``local_rank`` 0 alone downloads."""
    if dataset == "imagenet":
        if dirichlet_alpha:
            raise DataError("--dirichlet-alpha needs every label in memory; it is not available for --dataset imagenet")
        return build_imagenet(
            imagenet_dir or data_dir,
            image_size,
            loader_workers,
            val_ratio,
            batch_size,
            eval_batch_size,
            augment,
            seed,
            rank,
            world_size,
            device,
        )
    raw = load_raw(dataset, data_dir, download, synthetic_size, test_ratio, seed, local_rank, wait_seconds)
    (train_images, train_labels), (val_images, val_labels) = split_train_val(raw, val_ratio, seed)
    check_shards(len(train_images), world_size * workers_per_rank, batch_size, workers_per_rank)
    normalizer = Normalizer.from_images(train_images).to(device)
    # The whole data set is copied to the device once (on a GPU it stays there: no per-batch copies).
    on_device = lambda tensor: to_device(tensor, device)  # noqa: E731
    # Mirroring digits makes other symbols (a flipped 2 is no 2), so MNIST is only cropped.
    flip = dataset != "mnist"
    fixed_shard = dirichlet_shards(train_labels, world_size, dirichlet_alpha, seed)[rank] if dirichlet_alpha else None
    train = TrainBatches(
        on_device(train_images),
        on_device(train_labels),
        normalizer,
        batch_size,
        rank,
        world_size,
        seed,
        augment,
        flip,
        fixed_shard,
    )
    val = EvalBatches(on_device(val_images), on_device(val_labels), normalizer, eval_batch_size, rank, world_size)
    test = EvalBatches(
        on_device(raw.test_images), on_device(raw.test_labels), normalizer, eval_batch_size, rank, world_size
    )
    channels, image_size = train_images.shape[1], train_images.shape[2]
    return Data(train, val, test, channels, image_size, raw.num_classes, len(train_images))


def build_imagenet(
    root: str,
    image_size: int,
    loader_workers: int,
    val_ratio: float,
    batch_size: int,
    eval_batch_size: int,
    augment: bool,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> Data:
    """ImageFolder data decoded by DataLoader workers (dataloaders.imagenet), sharded like the other sources."""
    train_set, train_indices, val_set, val_indices, test_set, classes = imagenet_splits(
        root, image_size, augment, val_ratio, seed
    )
    shard_size = len(train_indices) // world_size
    if shard_size < batch_size:
        raise DataError(
            f"each of the {world_size} ranks gets {shard_size} training images, fewer than one batch of "
            f"{batch_size}; lower --batch-size or the number of ranks"
        )
    train = FolderTrainBatches(train_set, train_indices, batch_size, rank, world_size, seed, loader_workers, device)
    val = FolderEvalBatches(val_set, val_indices, eval_batch_size, rank, world_size, loader_workers, device)
    test = FolderEvalBatches(
        test_set, torch.arange(len(test_set)), eval_batch_size, rank, world_size, loader_workers, device
    )
    return Data(train, val, test, 3, image_size, len(classes), len(train_indices))
