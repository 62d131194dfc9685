"""Checks on a data set as loaded, before any rank trains on it or writes anything.

Each problem becomes one ``DataError`` line naming the file or split and what to do. Bad labels
are the dangerous case: a label of -1 fails mid-training, 1e9 asks for a model with a billion
outputs, float labels would be truncated silently, and test labels outside the training classes
score 0 without a word.
"""

from __future__ import annotations

import os

import numpy as np
import torch


class DataError(RuntimeError):
    """The data set cannot be loaded; the message says where to put the files."""


def load_array(path: str) -> np.ndarray:
    """A plain .npy array (never a pickle: loading one can run code)."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise DataError(
            f"{os.path.abspath(path)} is not a readable numeric .npy array ({reason}); "
            f"write it with numpy.save from a uint8 or integer array"
        )


def labels_tensor(values, name: str) -> torch.Tensor:
    """Integer class indices as int64; floats, strings and objects are refused, not converted."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{name}: expected one label per sample (shape (N,)), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise DataError(
            f"{name}: labels must be integer class indices, got dtype {array.dtype}; "
            f"convert them with labels.astype(numpy.int64) after checking they are whole numbers"
        )
    return torch.as_tensor(array.astype(np.int64, copy=False))


def _check_split(images: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    if len(images) != len(labels):
        raise DataError(
            f"the {split} split has {len(images)} images but {len(labels)} labels; give one label per image"
        )
    if len(images) == 0:
        raise DataError(
            f"the {split} split is empty; give more samples (or, for npy data without test files, "
            f"a larger --test-ratio)"
        )


def check_raw(raw) -> None:
    """Non-empty splits of matching lengths, one image shape, and labels in 0..num_classes-1 everywhere."""
    _check_split(raw.train_images, raw.train_labels, "training")
    _check_split(raw.test_images, raw.test_labels, "test")
    if raw.test_images.shape[1:] != raw.train_images.shape[1:]:
        raise DataError(
            f"test images are shaped {tuple(raw.test_images.shape[1:])} (C,H,W) but training images "
            f"{tuple(raw.train_images.shape[1:])}; both splits need the same image shape"
        )
    for split, labels in (("training", raw.train_labels), ("test", raw.test_labels)):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= raw.num_classes:
            bad = low if low < 0 else high
            raise DataError(
                f"a {split} label is {bad}, outside the classes 0..{raw.num_classes - 1} of the training "
                f"labels; labels must be class indices 0..K-1"
            )


def check_class_count(num_classes: int, samples: int, name: str) -> None:
    """More classes than samples means the labels are not class indices (a label of 1e9 would ask for a
    model with a billion outputs)."""
    if num_classes > samples:
        raise DataError(
            f"{name}: the largest label asks for {num_classes} classes but there are only {samples} "
            f"samples; labels must be class indices 0..K-1"
        )


def check_shards(train_count: int, parts: int, batch_size: int, workers_per_rank: int = 1) -> None:
    """Every rank (every Hogwild worker, with several per rank) must get at least one full batch."""
    shard = train_count // parts
    if shard < batch_size:
        who = (
            f"each of the {parts} workers ({workers_per_rank} per rank)"
            if workers_per_rank > 1
            else f"each of the {parts} ranks"
        )
        raise DataError(
            f"{who} gets {shard} training images, fewer than one batch of {batch_size}; lower "
            f"--batch-size, --workers-per-node or the number of ranks"
        )
