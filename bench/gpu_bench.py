"""Seconds per epoch of wide LeNet-5 and ResNet-20 on CIFAR-10-shaped data resident on one device.

    python bench/gpu_bench.py                                  # CUDA; real CIFAR-10 where --data-dir has it
    python bench/gpu_bench.py --amp off bf16 fp16 --epochs 5 --out gpu_bench.md
    python bench/gpu_bench.py --device cpu --models lenet5w --amp off --epochs 2 --synthetic-size 512   # dry run

Each model x precision is one single-process run of main.py (MBSGD: no communication), so
what is timed is the trainer itself: the whole data set on the device, batched augmentation
there, forward, backward and optimizer step. The loop times each epoch between
torch.cuda.synchronize calls (train/loop.py); the table reads those times back from
metrics.jsonl. The first epoch carries the one-off costs (CUDA context, cuDNN's algorithm
search under cudnn.benchmark, the caching allocator growing), so it is shown apart from the
median of the later epochs. Evaluation runs once, after the last epoch, and is not timed.
The data is the real CIFAR-10 when --data-dir holds it as .npy files (--dataset npy), else
the synthetic set of the same shape: 50,000 training and 10,000 test images of 3x32x32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

from bench.common import (  # noqa: E402
    RunFailed,
    add_common_arguments,
    emit,
    fail,
    header_line,
    load_metrics,
    load_run_config,
    markdown_table,
    percent,
    run_main,
)

CIFAR10_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
HEADERS = [
    "model",
    "amp",
    "data",
    "batch",
    "train images",
    "epoch 1 (s)",
    "later epochs, median (s)",
    "images/s (later epochs)",
    "final train loss",
    "test accuracy (%)",
]


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument(
        "--dataset",
        default="auto",
        choices=("auto", "npy", "synthetic"),
        help="auto: npy where --data-dir holds images.npy, else synthetic",
    )
    parser.add_argument("--synthetic-size", type=int, default=50000, help="training images of the synthetic set")
    parser.add_argument("--models", nargs="+", default=["lenet5w", "resnet20"])
    parser.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=("off", "bf16", "fp16"))
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is reported apart")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    add_common_arguments(parser, "gpu_bench")
    parser.set_defaults(data_dir=str(CIFAR10_DIR))
    arguments = parser.parse_args(argv)
    if arguments.dataset == "auto":
        arguments.dataset = "npy" if (Path(arguments.data_dir) / "images.npy").exists() else "synthetic"
    if arguments.epochs < 1:
        parser.error("--epochs must be at least 1")
    return arguments


def main_arguments(arguments: argparse.Namespace, model: str, amp: str) -> list:
    flags = [
        "--training-type",
        "MBSGD",
        "--model",
        model,
        "--amp",
        amp,
        "--device",
        arguments.device,
        "--dataset",
        arguments.dataset,
        "--data-dir",
        arguments.data_dir,
        "--epochs",
        arguments.epochs,
        "--batch-size",
        arguments.batch_size,
        "--lr",
        arguments.lr,
        "--eval-every",
        arguments.epochs,
        "--log-every",
        100000,
    ]
    if arguments.dataset == "synthetic":
        flags += ["--synthetic-size", arguments.synthetic_size]
    return flags + arguments.extra.split()


def table_row(arguments: argparse.Namespace, model: str, amp: str, summary: dict, rows: list, run_config: dict):
    seconds = [row["train_seconds"] for row in rows]
    rates = [row["images_per_second"] for row in rows]
    later = seconds[1:] or seconds  # one epoch only: it is all there is
    return [
        model,
        amp,
        arguments.dataset,
        arguments.batch_size,
        run_config["run"]["train_size"],
        f"{seconds[0]:.2f}",
        f"{statistics.median(later):.2f}",
        f"{statistics.median(rates[1:] or rates):.0f}",
        f"{rows[-1]['train_loss']:.4f}",
        percent(summary["final_test_accuracy"]),
    ]


def device_name(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return "CPU"


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    rows = []
    for model in arguments.models:
        for amp in arguments.amp:
            run_dir = Path(arguments.runs_dir) / f"{model}-{amp}"
            try:
                summary = run_main(run_dir, 1, main_arguments(arguments, model, amp), arguments.rerun)
            except RunFailed as error:
                return fail(error)
            rows.append(table_row(arguments, model, amp, summary, load_metrics(run_dir), load_run_config(run_dir)))
    title = (
        f"Seconds per training epoch on {device_name(arguments.device)}, data set resident on the device, "
        f"one process, {arguments.epochs} epochs per run"
    )
    emit(f"{header_line('gpu_bench', arguments)}\n\n### {title}\n\n{markdown_table(HEADERS, rows)}", arguments.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
