"""Data sources: synthetic, npy, MNIST (real files where present), and their errors."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dataloaders import DataError, load_raw
from dataloaders.sources import synthetic

SHARED_DATA = Path(os.environ.get("SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- sources


def test_synthetic_is_deterministic_and_shaped_like_cifar():
    first, second = synthetic(300), synthetic(300)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.train_labels, second.train_labels)
    assert torch.equal(first.test_images, second.test_images)
    assert first.train_images.shape == (300, 3, 32, 32) and first.train_images.dtype == torch.uint8
    assert first.test_images.shape == (60, 3, 32, 32)
    assert first.train_labels.dtype == torch.int64
    assert set(first.train_labels.tolist()) <= set(range(10)) and first.num_classes == 10
    assert len(set(first.train_labels.tolist())) == 10


def test_load_raw_unknown_dataset():
    with pytest.raises(DataError, match="nope"):
        load_raw("nope", "unused", False, 10, 0.1, 0)


def test_mnist_missing_without_download_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError) as caught:
        load_raw("mnist", str(tmp_path), False, 0, 0.1, 0)
    message = str(caught.value)
    assert str(tmp_path.resolve()) in message
    assert "MNIST/raw" in message and "--data-dir" in message
    assert "\n" not in message


def write_npy(folder, name, array):
    np.save(folder / name, array)


def test_npy_with_test_files(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
    write_npy(tmp_path, "images.npy", train)
    write_npy(tmp_path, "labels.npy", np.arange(30) % 4)
    write_npy(tmp_path, "test_images.npy", test)
    write_npy(tmp_path, "test_labels.npy", np.arange(10) % 4)  # classes come from labels.npy
    raw = load_raw("npy", str(tmp_path), False, 0, 0.1, 0)
    assert torch.equal(raw.train_images, torch.from_numpy(train).permute(0, 3, 1, 2))
    assert torch.equal(raw.test_images, torch.from_numpy(test).permute(0, 3, 1, 2))
    assert raw.train_labels.dtype == torch.int64
    assert torch.equal(raw.test_labels, torch.arange(10) % 4)
    assert raw.num_classes == 4


def test_npy_without_test_files_holds_out_a_seeded_test_split(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 5, 5), dtype=np.uint8)  # greyscale (N, H, W)
    write_npy(tmp_path, "images.npy", images)
    write_npy(tmp_path, "labels.npy", np.arange(40))
    raw = load_raw("npy", str(tmp_path), False, 0, 0.25, 2)
    assert raw.train_images.shape == (30, 1, 5, 5) and raw.test_images.shape == (10, 1, 5, 5)
    train, test = raw.train_labels.tolist(), raw.test_labels.tolist()
    assert set(train).isdisjoint(test) and sorted(train + test) == list(range(40))
    assert torch.equal(raw.train_images[:, 0], torch.from_numpy(images)[raw.train_labels])
    assert raw.num_classes == 40
    again = load_raw("npy", str(tmp_path), False, 0, 0.25, 2)
    assert torch.equal(again.test_labels, raw.test_labels)
    assert not torch.equal(load_raw("npy", str(tmp_path), False, 0, 0.25, 3).test_labels, raw.test_labels)


def test_npy_missing_files_say_where(tmp_path):
    with pytest.raises(DataError, match="images.npy") as caught:
        load_raw("npy", str(tmp_path), False, 0, 0.1, 0)
    assert str(tmp_path.resolve()) in str(caught.value)


def test_npy_rejects_float_images_and_length_mismatch(tmp_path):
    write_npy(tmp_path, "images.npy", np.zeros((4, 5, 5), dtype=np.float32))
    write_npy(tmp_path, "labels.npy", np.arange(4))
    with pytest.raises(DataError, match="uint8"):
        load_raw("npy", str(tmp_path), False, 0, 0.25, 0)
    write_npy(tmp_path, "images.npy", np.zeros((4, 5, 5), dtype=np.uint8))
    write_npy(tmp_path, "labels.npy", np.arange(3))
    with pytest.raises(DataError, match="labels"):
        load_raw("npy", str(tmp_path), False, 0, 0.25, 0)


def test_npy_test_images_without_test_labels_is_a_data_error(tmp_path):
    # A half-present test split must end as a DataError naming the missing file, not a bare
    # FileNotFoundError that main.py does not catch (a traceback instead of one 'error:' line).
    write_npy(tmp_path, "images.npy", np.zeros((8, 5, 5), dtype=np.uint8))
    write_npy(tmp_path, "labels.npy", np.arange(8))
    write_npy(tmp_path, "test_images.npy", np.zeros((2, 5, 5), dtype=np.uint8))
    with pytest.raises(DataError, match="test_labels.npy"):
        load_raw("npy", str(tmp_path), False, 0, 0.25, 0)


@pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(),
    reason=f"no MNIST raw files under {SHARED_DATA} (set SHARED_DATA to the shared data folder)",
)
def test_real_mnist_from_the_shared_folder():
    raw = load_raw("mnist", str(SHARED_DATA), False, 0, 0.1, 0)
    assert raw.train_images.shape == (60000, 1, 28, 28) and raw.train_images.dtype == torch.uint8
    assert raw.test_images.shape == (10000, 1, 28, 28)
    assert raw.train_labels.shape == (60000,) and raw.test_labels.shape == (10000,)
    assert raw.num_classes == 10
    assert set(raw.train_labels.unique().tolist()) == set(range(10))
    assert set(raw.test_labels.unique().tolist()) == set(range(10))
    assert 0.10 < raw.train_images.float().mean().item() / 255 < 0.15  # MNIST's mean pixel is about 0.1307
