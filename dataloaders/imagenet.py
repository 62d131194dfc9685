"""ImageNet, or any ImageFolder with ``train/`` and ``val/``: JPEGs decoded in DataLoader worker processes.

This data cannot be tensor-resident (ImageNet's training split is ~140 GB decoded), so unlike the
other sources each batch is read and decoded from disk by ``loader_workers`` processes per rank.
It keeps the other sources' contract: a seeded validation split held out of ``train/`` (the same on
every rank); each epoch every rank takes its equal, disjoint slice of the same seeded permutation
(``shard_indices``), so every rank makes the same number of steps; evaluation slices cover every
sample exactly once. ``val/`` is the test split, as LPP-SGD and the ImageNet literature use it.

Transforms are the standard ImageNet recipe (the torchvision reference scripts; Goyal et al. 2017):
training takes a random resized crop (scale 0.08-1) and a horizontal flip, evaluation resizes the
short side to 256 and takes the 224 centre crop; both normalise with ImageNet's channel statistics.
``image_size`` scales both crops (evaluation resizes to 256/224 of it), for small test images.
"""

from __future__ import annotations

import copy
import multiprocessing
import os

import torch
from torch.utils.data import DataLoader

from dataloaders.loader import shard_indices
from dataloaders.sources import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224


def image_transform(image_size: int, train: bool):
    from torchvision import transforms

    if train:
        steps = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(round(image_size * RESIZE_RATIO)), transforms.CenterCrop(image_size)]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def image_folder(root: str, split: str):
    """The ImageFolder of ``root/split``, or DataError saying what is missing."""
    from torchvision import datasets

    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise DataError(
            f"--dataset imagenet needs an ImageFolder at {os.path.abspath(root)} with train/ and val/ "
            f"(one sub-folder of images per class); {split}/ is missing: check --imagenet-dir"
        )
    try:
        return datasets.ImageFolder(folder)
    except (FileNotFoundError, OSError) as error:  # no class folders, or no image in any of them
        raise DataError(
            f"{os.path.abspath(folder)} holds no images in class sub-folders "
            f"({str(error).splitlines()[0]}); check --imagenet-dir"
        )


def _loader_workers(requested: int) -> int:
    # A daemonic process (an LPPSGD/LAPSGD worker) may not start children: it decodes its own batches.
    return 0 if multiprocessing.current_process().daemon else requested


class FolderTrainBatches:
    """One rank's training batches for one epoch, ``steps_per_epoch`` of ``batch_size`` each."""

    def __init__(
        self,
        dataset,
        indices: torch.Tensor,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        loader_workers: int,
        device: torch.device,
    ):
        self.dataset, self.indices, self.batch_size = dataset, indices, batch_size
        self.seed, self.loader_workers, self.device = seed, loader_workers, device
        self.reshard(rank, world_size)

    def reshard(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.shard_size = len(self.indices) // world_size
        self.steps_per_epoch = self.shard_size // self.batch_size

    def resharded(self, rank: int, world_size: int) -> "FolderTrainBatches":
        """A copy reading shard ``rank`` of ``world_size`` (LPPSGD/LAPSGD split a node's shard among workers)."""
        part = copy.copy(self)
        part.reshard(rank, world_size)
        return part

    def share_memory(self) -> None:
        """Nothing is held in memory: every worker reads the files itself."""

    def epoch(self, epoch: int, start_step: int = 0):
        """Yield (inputs, targets) for ``epoch``, skipping the first ``start_step`` batches (resume)."""
        order = shard_indices(len(self.indices), self.rank, self.world_size, self.seed, epoch)
        shard = self.indices[order][start_step * self.batch_size : self.steps_per_epoch * self.batch_size]
        # Seeds the loader workers' crops and flips: the same epoch gives the same batches again.
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 4099 + self.rank)
        loader = DataLoader(
            self.dataset,
            self.batch_size,
            sampler=shard.tolist(),
            drop_last=True,
            num_workers=_loader_workers(self.loader_workers),
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class FolderEvalBatches:
    """One rank's contiguous slice of an evaluation split; the slices cover every sample exactly once."""

    def __init__(
        self,
        dataset,
        indices: torch.Tensor,
        batch_size: int,
        rank: int,
        world_size: int,
        loader_workers: int,
        device: torch.device,
    ):
        bounds = [len(indices) * r // world_size for r in range(world_size + 1)]
        self.dataset, self.indices = dataset, indices[bounds[rank] : bounds[rank + 1]]
        self.batch_size, self.loader_workers, self.device = batch_size, loader_workers, device
        self.total = len(indices)

    def __iter__(self):
        loader = DataLoader(
            self.dataset,
            self.batch_size,
            sampler=self.indices.tolist(),
            num_workers=_loader_workers(self.loader_workers),
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def with_transform(dataset, transform):
    """The same list of files seen through another transform (scanning ImageNet's folders takes a while)."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


def imagenet_splits(root: str, image_size: int, augment: bool, val_ratio: float, seed: int):
    """(train set, train indices, held-out set, held-out indices, test set, classes) for ``root``."""
    train_files, test_files = image_folder(root, "train"), image_folder(root, "val")
    if train_files.classes != test_files.classes:
        raise DataError(
            f"train/ has {len(train_files.classes)} classes and val/ {len(test_files.classes)}, or "
            f"they are named differently, in {os.path.abspath(root)}; both need the same class folders"
        )
    evaluation = image_transform(image_size, train=False)
    train_set = with_transform(train_files, image_transform(image_size, train=True) if augment else evaluation)
    # The seeded validation split of the other sources (dataloaders.split_train_val), evaluated unaugmented.
    order = torch.randperm(len(train_files), generator=torch.Generator().manual_seed(seed + 1))
    val_count = max(1, int(round(len(order) * val_ratio)))
    return (
        train_set,
        order[val_count:],
        with_transform(train_files, evaluation),
        order[:val_count],
        with_transform(test_files, evaluation),
        train_files.classes,
    )
