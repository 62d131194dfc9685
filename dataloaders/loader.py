"""Tensor-resident loaders: seeded shards, batched augmentation, no per-image Python.

The whole split lives as one uint8 tensor (on the GPU when training there). Each epoch
every rank draws the same seeded permutation and takes its own contiguous, equal-sized
slice, so shards are disjoint and every rank makes the same number of steps (and so the
same collectives). Crop and flip offsets for the epoch are drawn up front from a
generator seeded by (seed, epoch, rank): a run resumed mid-epoch sees the same batches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

PAD = 4  # random-crop padding, as in the CIFAR ResNet recipe (He et al. 2016, sec. 4.2)


def shard_indices(num_samples: int, rank: int, world_size: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's slice of the epoch's permutation; the remainder (< world_size) is dropped."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator)
    per_rank = num_samples // world_size
    return order[rank * per_rank : (rank + 1) * per_rank]


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor`` on ``device``. A host-to-GPU copy goes through page-locked (pinned) memory: the GPU
    reads it by DMA without the driver's staging copy, and the host does not wait for the copy."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type == "cuda":
        return tensor.to(device)
    # The pinned block is held by torch's caching host allocator until the copy reading it is done.
    return tensor.pin_memory().to(device, non_blocking=True)


def random_crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Crop every image of a uint8 batch at its own (dy, dx) offset from a zero-padded copy, and
    mirror those with ``flips`` set, in a few whole-batch tensor operations."""
    batch, channels, height, width = images.shape
    padded_width = width + 2 * PAD
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD)).reshape(batch, channels, -1)
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(width, device=images.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    # One gather over the flattened padded images picks every output pixel at once.
    flat_index = (rows[:, :, None] * padded_width + cols[:, None, :]).reshape(batch, 1, -1)
    cropped = padded.gather(2, flat_index.expand(batch, channels, -1))
    return cropped.reshape(batch, channels, height, width)


@dataclass
class Normalizer:
    mean: torch.Tensor  # (1, C, 1, 1) float
    std: torch.Tensor

    @classmethod
    def from_images(cls, images: torch.Tensor) -> "Normalizer":
        """Per-channel statistics of a uint8 split (the training split, never validation or test)."""
        # Sums in float64 over chunks: a float copy of the whole split would cost 8 bytes per pixel.
        channels = images.shape[1]
        total, total_squares = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
        for chunk in images.split(1024):
            pixels = chunk.transpose(0, 1).reshape(channels, -1).double().div_(255)
            total += pixels.sum(dim=1)
            total_squares += pixels.square().sum(dim=1)
        count = images.numel() // channels
        mean = total / count
        std = ((total_squares - count * mean.square()) / (count - 1)).clamp_min(0).sqrt().clamp_min(1e-6)
        return cls(mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1))

    def to(self, device) -> "Normalizer":
        return Normalizer(self.mean.to(device), self.std.to(device))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().div_(255) - self.mean) / self.std


class TrainBatches:
    """One rank's training batches for one epoch, ``steps_per_epoch`` of ``batch_size`` each."""

    def __init__(
        self,
        images,
        labels,
        normalizer: Normalizer,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        augment: bool,
        flip: bool,
        fixed_shard: torch.Tensor = None,
    ):
        self.images, self.labels, self.normalizer = images, labels, normalizer
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.augment, self.flip = augment, flip
        self.fixed_shard = fixed_shard  # non-iid: this rank's indices for the whole run (dataloaders.dirichlet_shards)
        self.shard_size = len(images) // world_size if fixed_shard is None else len(fixed_shard)
        self.steps_per_epoch = self.shard_size // batch_size

    def resharded(self, rank: int, world_size: int) -> "TrainBatches":
        """A copy reading shard ``rank`` of ``world_size`` (LPPSGD/LAPSGD split a node's shard among workers)."""
        part = copy.copy(self)
        part.rank, part.world_size = rank, world_size
        part.shard_size = len(self.images) // world_size
        part.steps_per_epoch = part.shard_size // self.batch_size
        return part

    def share_memory(self) -> None:
        """Put the split in shared memory, so worker processes read it without a copy."""
        self.images.share_memory_()
        self.labels.share_memory_()

    def shard(self, epoch: int) -> torch.Tensor:
        if self.fixed_shard is None:
            return shard_indices(len(self.images), self.rank, self.world_size, self.seed, epoch)
        order = torch.randperm(len(self.fixed_shard), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        return self.fixed_shard[order]

    def epoch(self, epoch: int, start_step: int = 0):
        """Yield (inputs, targets) for ``epoch``, skipping the first ``start_step`` batches (resume)."""
        # Drawn on the host (the same numbers on every device), then copied over once per epoch.
        device = self.images.device
        indices = to_device(self.shard(epoch), device)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 4099 + self.rank)
        offsets = to_device(torch.randint(0, 2 * PAD + 1, (len(indices), 2), generator=generator), device)
        flips = to_device(torch.rand(len(indices), generator=generator) < 0.5, device) & self.flip
        for step in range(start_step, self.steps_per_epoch):
            batch = slice(step * self.batch_size, (step + 1) * self.batch_size)
            images = self.images[indices[batch]]
            if self.augment:
                images = random_crop_flip(images, offsets[batch], flips[batch])
            yield self.normalizer(images), self.labels[indices[batch]]


class EvalBatches:
    """One rank's contiguous slice of an evaluation split; the slices cover every sample exactly once."""

    def __init__(self, images, labels, normalizer: Normalizer, batch_size: int, rank: int, world_size: int):
        bounds = [len(images) * r // world_size for r in range(world_size + 1)]
        self.images = images[bounds[rank] : bounds[rank + 1]]
        self.labels = labels[bounds[rank] : bounds[rank + 1]]
        self.normalizer, self.batch_size = normalizer, batch_size
        self.total = len(images)

    def __iter__(self):
        for start in range(0, len(self.images), self.batch_size):
            yield (
                self.normalizer(self.images[start : start + self.batch_size]),
                self.labels[start : start + self.batch_size],
            )
