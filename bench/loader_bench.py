"""Data path benchmark: the trainer's tensor-resident loader against a torchvision DataLoader.

Both pipelines do the same work per training batch: take this rank's shard in a seeded
order, random crop (pad 4) and horizontal flip (no flip for MNIST), normalise with the
train-split statistics. The trainer's loader does it on whole uint8 batches; the torchvision
pipeline does it per image (PIL image -> RandomCrop -> RandomHorizontalFlip -> ToTensor ->
Normalize) in a DataLoader, as most training scripts do. One thread each (per-core figures).
A training step of ``--model`` on the same batch sets the scale: the loader's share of a step.

    python bench/loader_bench.py --dataset mnist --model lenet5w --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import markdown_table  # noqa: E402
from dataloaders import build_data  # noqa: E402
from models import build_model  # noqa: E402


class PerImageDataset(torch.utils.data.Dataset):
    """What a torchvision data set does per item: a PIL image, then the transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        from PIL import Image

        self.to_pil = Image.fromarray
        self.images, self.labels, self.transform = images.permute(0, 2, 3, 1).numpy(), labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        image = self.to_pil(image[..., 0] if image.shape[-1] == 1 else image)
        return self.transform(image), self.labels[index]


def time_batches(batches, limit: int) -> tuple:
    """(images per second, seconds per batch) over the first ``limit`` batches."""
    started, images, count = time.perf_counter(), 0, 0
    for inputs, _ in batches:
        images += len(inputs)
        count += 1
        if count == limit:
            break
    seconds = time.perf_counter() - started
    return images / seconds, seconds / count


def step_seconds(model_name: str, inputs: torch.Tensor, targets: torch.Tensor, classes: int, repeats: int) -> float:
    model = build_model(model_name, inputs.shape[1], inputs.shape[2], classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for index in range(repeats + 2):
        if index == 2:  # two warm-up steps
            started = time.perf_counter()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - started) / repeats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--synthetic-size", type=int, default=50000)
    parser.add_argument("--model", default="lenet5w")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=300, help="batches timed per pipeline")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    data = build_data(
        arguments.dataset,
        data_dir=arguments.data_dir,
        synthetic_size=arguments.synthetic_size,
        batch_size=arguments.batch_size,
        eval_batch_size=1000,
    )
    train = data.train
    ours_rate, ours_batch = time_batches(train.epoch(0), arguments.batches)

    from torchvision import transforms

    mean, std = train.normalizer.mean.flatten().tolist(), train.normalizer.std.flatten().tolist()
    steps = [transforms.RandomCrop(data.image_size, padding=4)]
    if arguments.dataset != "mnist":
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    dataset = PerImageDataset(train.images, train.labels, transforms.Compose(steps))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=arguments.batch_size, shuffle=True, num_workers=0, drop_last=True
    )
    vision_rate, vision_batch = time_batches(loader, arguments.batches)

    inputs, targets = next(train.epoch(0))
    step = step_seconds(arguments.model, inputs, targets, data.num_classes, repeats=30)
    rows = [
        [
            "trainer (tensor-resident, batched crop/flip)",
            f"{ours_rate:.0f}",
            f"{1000 * ours_batch:.2f}",
            f"{100 * ours_batch / step:.1f}",
            f"{ours_rate / vision_rate:.1f}x",
        ],
        [
            "torchvision DataLoader (per-image PIL transforms)",
            f"{vision_rate:.0f}",
            f"{1000 * vision_batch:.2f}",
            f"{100 * vision_batch / step:.1f}",
            "1.0x",
        ],
    ]
    header = (
        f"# loader_bench: {arguments.dataset}, batch {arguments.batch_size}, {arguments.batches} batches, 1 thread, "
        f"torch {torch.__version__}; a {arguments.model} training step on this batch takes {1000 * step:.1f} ms"
    )
    table = markdown_table(
        ["pipeline", "images/s (1 core)", "ms per batch", "% of a training step", "speed vs torchvision"], rows
    )
    print(header + "\n\n" + table)
    if arguments.out:
        Path(arguments.out).write_text(header + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
