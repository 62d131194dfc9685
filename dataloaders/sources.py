"""Raw data sets as uint8 image tensors (N, C, H, W) and int64 labels.

CIFAR-10/100 and MNIST come through torchvision (download with checksum). MNIST is also
read straight from torchvision's gzipped raw files, md5-checked, so a read-only copy
such as a shared data folder works without extracting. ``npy`` reads any data set given
as arrays; ``synthetic`` is a learnable offline stand-in with CIFAR's shapes.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np
import torch

from dataloaders.download_lock import load_once_per_node
from dataloaders.validate import DataError, check_class_count, check_raw, labels_tensor, load_array


@dataclass
class RawData:
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def _to_nchw(images) -> torch.Tensor:
    array = np.asarray(images)
    if array.dtype != np.uint8:  # checked before torch sees strings or objects, which it cannot hold
        raise DataError(f"expected uint8 images, got {array.dtype}")
    array = torch.as_tensor(array)
    if array.ndim == 3:  # (N, H, W) greyscale
        return array.unsqueeze(1).contiguous()
    if array.ndim == 4 and array.shape[-1] in (1, 3):  # (N, H, W, C)
        return array.permute(0, 3, 1, 2).contiguous()
    raise DataError(f"expected images shaped (N,H,W) or (N,H,W,C), got {tuple(array.shape)}")


def _labels(values, name: str = "labels") -> torch.Tensor:
    return labels_tensor(values, name)


def _torchvision_cifar(name: str, data_dir: str, download: bool) -> RawData:
    from torchvision import datasets

    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train = dataset_class(data_dir, train=True, download=download)
        test = dataset_class(data_dir, train=False, download=download)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        raise DataError(_missing_message(name, data_dir, download, error))
    except OSError as error:  # no network while downloading
        raise DataError(_missing_message(name, data_dir, download, error))
    classes = 10 if name == "cifar10" else 100
    return RawData(_to_nchw(train.data), _labels(train.targets), _to_nchw(test.data), _labels(test.targets), classes)


def _missing_message(name: str, data_dir: str, download: bool, error: Exception) -> str:
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "mnist": "MNIST/raw"}[name]
    how = "the download failed" if download else "--no-download was given"
    return (
        f"{name} not found in {os.path.abspath(data_dir)} ({how}: {str(error).splitlines()[0]}); "
        f"put torchvision's {folder} there, point --data-dir at it, or use --dataset synthetic"
    )


def _read_idx(path: str) -> np.ndarray:
    """An MNIST idx file, gzipped or not (header: magic with the rank in its last byte, then the sizes)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        payload = bytearray(handle.read())  # writable, so torch can share the memory without a warning
    rank = payload[3]
    shape = np.frombuffer(payload, dtype=">i4", count=rank, offset=4)
    return np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def _mnist(data_dir: str, download: bool) -> RawData:
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    raw = os.path.join(data_dir, "MNIST", "raw")
    files = {os.path.basename(url): md5 for url, md5 in datasets.MNIST.resources}
    if all(check_integrity(os.path.join(raw, name), md5) for name, md5 in files.items()):
        arrays = {name.split("-")[0] + "_" + name.split("-")[1]: _read_idx(os.path.join(raw, name)) for name in files}
        return RawData(
            _to_nchw(arrays["train_images"]),
            _labels(arrays["train_labels"]),
            _to_nchw(arrays["t10k_images"]),
            _labels(arrays["t10k_labels"]),
            10,
        )
    try:
        train = datasets.MNIST(data_dir, train=True, download=download)
        test = datasets.MNIST(data_dir, train=False, download=download)
    except (RuntimeError, OSError) as error:
        raise DataError(_missing_message("mnist", data_dir, download, error))
    return RawData(
        _to_nchw(train.data.numpy()), _labels(train.targets), _to_nchw(test.data.numpy()), _labels(test.targets), 10
    )


def _npy(data_dir: str, test_ratio: float, seed: int) -> RawData:
    path = lambda name: os.path.join(data_dir, name)  # noqa: E731
    if not (os.path.exists(path("images.npy")) and os.path.exists(path("labels.npy"))):
        raise DataError(f"--dataset npy needs images.npy (N,H,W,C uint8) and labels.npy in {os.path.abspath(data_dir)}")
    images, labels = _to_nchw(load_array(path("images.npy"))), _labels(load_array(path("labels.npy")), "labels.npy")
    if len(images) != len(labels):
        raise DataError(f"images.npy has {len(images)} images but labels.npy has {len(labels)} labels")
    has_test = [os.path.exists(path(name)) for name in ("test_images.npy", "test_labels.npy")]
    if any(has_test) and not all(has_test):
        missing = "test_labels.npy" if has_test[0] else "test_images.npy"
        raise DataError(f"{missing} is missing in {os.path.abspath(data_dir)}; give both test files or neither")
    # Classes come from labels.npy alone: test labels outside them could never be predicted.
    classes = int(labels.max()) + 1 if len(labels) else 0
    check_class_count(classes, len(labels), "labels.npy")
    if all(has_test):
        test_images = _to_nchw(load_array(path("test_images.npy")))
        test_labels = _labels(load_array(path("test_labels.npy")), "test_labels.npy")
    else:  # hold out a seeded test split, disjoint from what training and validation see
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + 7))
        held_out = int(round(len(images) * test_ratio))
        test_images, test_labels = images[order[:held_out]], labels[order[:held_out]]
        images, labels = images[order[held_out:]], labels[order[held_out:]]
    return RawData(images, labels, test_images, test_labels, classes)


def synthetic(train_size: int, num_classes: int = 10, channels: int = 3, size: int = 32) -> RawData:
    """A learnable data set with CIFAR's shapes: each class is a smooth colour pattern, samples
    are that pattern under random contrast, brightness and pixel noise. Fixed seed, so it is
    the same data set in every run and on every rank; crop and flip keep it recognisable."""
    generator = torch.Generator().manual_seed(20240501)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=generator)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def draw(count: int):
        labels = torch.randint(0, num_classes, (count,), generator=generator)
        contrast = 0.15 + 0.6 * torch.rand(count, 1, 1, 1, generator=generator)
        brightness = 0.3 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
        images = torch.empty(count, channels, size, size, dtype=torch.uint8)
        for start in range(0, count, 2048):  # in chunks: float copies of the whole set would cost 4 bytes/pixel
            part = slice(start, start + 2048)
            noise = 0.45 * torch.randn(len(labels[part]), channels, size, size, generator=generator)
            pixels = (templates[labels[part]] - 0.5) * contrast[part] + 0.5 + brightness[part] + noise
            images[part] = (pixels.clamp_(0, 1) * 255).round_().to(torch.uint8)
        return images, labels

    train_images, train_labels = draw(train_size)
    test_images, test_labels = draw(max(train_size // 5, num_classes))
    return RawData(train_images, train_labels, test_images, test_labels, num_classes)


# Data sets held whole in memory, by name: each loader takes load_raw's arguments (as `a`) and ``once``,
# which runs a download-capable load on one rank per node.
_LOADERS = {
    "cifar10": lambda a, once: once(lambda fetch: _torchvision_cifar("cifar10", a["data_dir"], fetch)),
    "cifar100": lambda a, once: once(lambda fetch: _torchvision_cifar("cifar100", a["data_dir"], fetch)),
    "mnist": lambda a, once: once(lambda fetch: _mnist(a["data_dir"], fetch)),
    "synthetic": lambda a, once: synthetic(a["synthetic_size"]),
    "npy": lambda a, once: _npy(a["data_dir"], a["test_ratio"], a["seed"]),
}
IN_MEMORY_SOURCES = tuple(_LOADERS)


def load_raw(
    name: str,
    data_dir: str,
    download: bool,
    synthetic_size: int,
    test_ratio: float,
    seed: int,
    local_rank: int = 0,
    wait_seconds: float = 300.0,
) -> RawData:
    """``local_rank`` 0 alone downloads a missing data set; the node's other ranks wait up to ``wait_seconds``."""
    once = lambda load: load_once_per_node(load, data_dir, download, local_rank, wait_seconds)  # noqa: E731
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(_LOADERS)}")
    arguments = {"data_dir": data_dir, "synthetic_size": synthetic_size, "test_ratio": test_ratio, "seed": seed}
    raw = _LOADERS[name](arguments, once)
    check_raw(raw)
    return raw
