"""The ImageFolder (ImageNet) source on a tiny folder of generated JPEGs: transforms, shards, coverage,
errors, and main.py on two Gloo ranks."""

from pathlib import Path

import pytest
import torch

from dataloaders import DataError, build_data
from dataloaders.imagenet import MEAN, STD
from tests.harness import check_ok, metrics, run_main, summary

CLASSES = ("ant", "bee", "cat")
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 3
CPU = torch.device("cpu")


def write_image_folder(root: Path, per_class: dict, size=(64, 48)) -> Path:
    """JPEGs of one colour per class (plus noise), ``per_class[split]`` of them per class and split."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                colour = torch.tensor([80 * label, 200 - 60 * label, 40 + 50 * label]).view(3, 1, 1)
                noise = torch.randint(-20, 21, (3, size[1], size[0]), generator=generator)
                pixels = (colour + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{index}.jpg")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imagenet"), {"train": TRAIN_PER_CLASS, "val": VAL_PER_CLASS})


def imagenet(root, rank=0, world_size=1, batch_size=4, augment=True, image_size=32, workers=1, **kwargs):
    return build_data(
        "imagenet",
        data_dir="unused",
        val_ratio=0.25,
        batch_size=batch_size,
        eval_batch_size=5,
        augment=augment,
        seed=7,
        rank=rank,
        world_size=world_size,
        device=CPU,
        imagenet_dir=str(root),
        image_size=image_size,
        loader_workers=workers,
        **kwargs,
    )


def test_sizes_classes_and_normalised_crops(folder):
    data = imagenet(folder)
    assert (data.channels, data.image_size, data.num_classes) == (3, 32, 3)
    assert data.train_size == 18 and data.val.total == 6 and data.test.total == 9  # 24 train images, 25% held out
    assert data.train.steps_per_epoch == 18 // 4
    batches = list(data.train.epoch(0))
    assert len(batches) == 4
    images, labels = batches[0]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    # Normalised with ImageNet's statistics: pixel 0..1 maps to (0 - mean) / std .. (1 - mean) / std.
    low = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = images.transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(1).values >= low - 1e-5).all() and (per_channel.max(1).values <= high + 1e-5).all()


def test_evaluation_is_the_deterministic_centre_crop(folder):
    from PIL import Image
    from torchvision.transforms import functional as TF

    data = imagenet(folder, image_size=32)
    first, _ = next(iter(data.test))
    second, _ = next(iter(data.test))
    assert torch.equal(first, second)
    # Resize the short side to round(32 * 256 / 224) = 37, centre crop 32, normalise.
    path = data.test.dataset.samples[0][0]
    expected = TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(Image.open(path).convert("RGB"), 37), 32)), MEAN, STD)
    assert torch.allclose(first[0], expected, atol=1e-6)


def test_training_augmentation_is_seeded_per_epoch(folder):
    data = imagenet(folder)
    first = [images for images, _ in data.train.epoch(0)]
    again = [images for images, _ in data.train.epoch(0)]
    other = [images for images, _ in data.train.epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    unaugmented = imagenet(folder, augment=False)
    assert torch.equal(next(unaugmented.train.epoch(0))[0], next(unaugmented.train.epoch(0))[0])


def shard_files(train, epoch):
    """The training indices one rank reads in ``epoch``, recovered by replaying its sampler order."""
    from dataloaders.loader import shard_indices

    order = shard_indices(len(train.indices), train.rank, train.world_size, train.seed, epoch)
    return train.indices[order][: train.steps_per_epoch * train.batch_size].tolist()


def test_ranks_get_equal_disjoint_shards_reshuffled_every_epoch(folder):
    ranks = [imagenet(folder, rank=rank, world_size=2, batch_size=3) for rank in range(2)]
    held_out = set(imagenet(folder).val.indices.tolist())  # one rank holds the whole validation split
    assert len(held_out) == 6
    assert {r.train.steps_per_epoch for r in ranks} == {3}  # 18 images / 2 ranks = 9 = 3 batches of 3
    for epoch in range(2):
        shards = [shard_files(r.train, epoch) for r in ranks]
        assert len(shards[0]) == len(shards[1]) == 9
        assert not set(shards[0]) & set(shards[1])
        assert not (set(shards[0]) | set(shards[1])) & held_out
    assert shard_files(ranks[0].train, 0) != shard_files(ranks[0].train, 1)
    # The labels a rank trains on are those of its shard's files.
    labels = torch.cat([labels for _, labels in ranks[1].train.epoch(0)]).tolist()
    assert labels == [ranks[1].train.dataset.targets[i] for i in shard_files(ranks[1].train, 0)]


@pytest.mark.parametrize("world_size", [2, 4])
def test_evaluation_covers_every_sample_exactly_once(folder, world_size):
    for split in ("val", "test"):
        parts = [
            getattr(imagenet(folder, rank=r, world_size=world_size, batch_size=2), split) for r in range(world_size)
        ]
        covered = sorted(i for part in parts for i in part.indices.tolist())
        everything = parts[0].total
        reference = imagenet(folder, batch_size=2)
        assert covered == sorted(getattr(reference, split).indices.tolist()) and len(covered) == everything
        assert sum(len(labels) for part in parts for _, labels in part) == everything


def test_bad_folders_give_one_clear_error(tmp_path, folder):
    with pytest.raises(DataError, match="train/ is missing"):
        imagenet(tmp_path / "nowhere")
    write_image_folder(tmp_path / "no_val", {"train": 2})
    with pytest.raises(DataError, match="val/ is missing"):
        imagenet(tmp_path / "no_val")
    (tmp_path / "empty" / "train" / "ant").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "ant").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        imagenet(tmp_path / "empty")
    write_image_folder(tmp_path / "mismatch", {"train": 2, "val": 1})
    (tmp_path / "mismatch" / "val" / "cat").rename(tmp_path / "mismatch" / "val" / "dog")
    with pytest.raises(DataError, match="same class folders"):
        imagenet(tmp_path / "mismatch")
    with pytest.raises(DataError, match="fewer than one batch"):
        imagenet(folder, batch_size=64)
    with pytest.raises(DataError, match="dirichlet"):
        imagenet(folder, dirichlet_alpha=0.5)


IMAGENET_RUN = [
    "--dataset",
    "imagenet",
    "--image-size",
    "32",
    "--model",
    "small",
    "--batch-size",
    "3",
    "--eval-batch-size",
    "4",
    "--epochs",
    "2",
    "--loader-workers",
    "1",
    "--log-every",
    "1000",
]


def test_main_trains_on_two_gloo_ranks(tmp_path, folder):
    output = tmp_path / "run"
    result = run_main(
        [
            *IMAGENET_RUN,
            "--imagenet-dir",
            str(folder),
            "--output-dir",
            str(output),
            "--val-ratio",
            "0.25",
            "--lr",
            "0.05",
        ],
        nproc=2,
    )
    check_ok(result)
    rows, final = metrics(output), summary(output)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert final["world_size"] == 2 and final["steps"] == 2 * 3 and final["replicas_identical"]
    # 9 test images: an accuracy measured over all of them is a multiple of 1/9.
    assert abs(final["final_test_accuracy"] * 9 - round(final["final_test_accuracy"] * 9)) < 1e-9
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in rows)


def test_main_reports_a_missing_folder_in_one_line(tmp_path):
    result = run_main(
        [*IMAGENET_RUN, "--imagenet-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "run")]
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train/ is missing" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_lppsgd_workers_decode_their_own_shards(tmp_path, folder):
    # Hogwild workers are daemonic processes, which may not start DataLoader workers: they decode themselves.
    output = tmp_path / "lpp"
    result = run_main(
        [
            *IMAGENET_RUN,
            "--epochs",
            "1",
            "--imagenet-dir",
            str(folder),
            "--output-dir",
            str(output),
            "--val-ratio",
            "0.25",
            "--training-type",
            "LPPSGD",
            "--workers-per-node",
            "2",
        ]
    )
    check_ok(result)
    # 18 training images split between 2 workers: 9 each, 3 batches of 3, 6 node steps.
    assert summary(output)["steps"] == 6


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image-size", "0"], "--image-size must be at least 1"),
        (["--loader-workers", "-1"], "--loader-workers must not be negative"),
    ],
)
def test_bad_imagenet_settings_are_refused(flags, message):
    from utilities.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config(["--dataset", "imagenet", *flags])
