"""Every training type on the same ranks, data and model: accuracy against communication, in one table.

    python bench/local_methods.py                                    # MNIST, LeNet-5, 2 ranks, 3 epochs
    python bench/local_methods.py --dataset synthetic --model mlp --epochs 1 --types MBSGD PLSGD
    python bench/local_methods.py --extra "--momentum-sync reset" --out local_methods.md

Each training type is one run of main.py (torchrun for --ranks > 1) in <runs-dir>/<type>; the
table is read back from each run's summary.json and metrics.jsonl. Everything but the training
type is shared, with two exceptions that follow the methods' papers: PostLocalSGD runs
mini-batch SGD for the first --switch-epoch epochs (Lin et al. 2020), and DiLoCo keeps main.py's
own inner optimizer (AdamW, lr 1e-3; Douillard et al. 2023), so --lr is not passed to it.
"""

from __future__ import annotations

import argparse
import shlex
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
    markdown_table,
    percent,
    run_main,
)

TYPES = ("MBSGD", "PLSGD", "PostLocalSGD", "SlowMo", "DiLoCo", "AdaptiveJ")
OTHER_TYPES = ("LAPSGD", "LPPSGD", "TorchPeriodicAverager", "EASGD")  # on request: --types ... LAPSGD
HEADERS = [
    "training type",
    "J",
    "final test accuracy (%)",
    "best val accuracy (%)",
    "rounds",
    "MB sent per rank",
    "comm seconds",
    "images/s",
    "comm reduction (%)",
    "wall seconds",
    "peak RSS rank 0 (MB)",
]


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--synthetic-size", type=int, default=10000, help="training images of --dataset synthetic")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="images per rank per step")
    parser.add_argument("--lr", type=float, default=0.05, help="base LR of every type but DiLoCo")
    parser.add_argument("--local-steps", type=int, default=16, help="J of the local methods")
    parser.add_argument(
        "--switch-epoch", type=int, help="PostLocalSGD: mini-batch SGD epochs (default epochs // 2, at least 1)"
    )
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES + OTHER_TYPES)
    parser.add_argument("--workers-per-node", type=int, default=2, help="LAPSGD/LPPSGD: Hogwild! workers per rank")
    add_common_arguments(parser, "local_methods")
    arguments = parser.parse_args(argv)
    if arguments.switch_epoch is None:
        arguments.switch_epoch = max(1, arguments.epochs // 2)
    return arguments


def main_arguments(arguments: argparse.Namespace, training_type: str) -> list:
    """The main.py flags of one training type's run."""
    flags = [
        "--training-type",
        training_type,
        "--dataset",
        arguments.dataset,
        "--data-dir",
        arguments.data_dir,
        "--model",
        arguments.model,
        "--epochs",
        arguments.epochs,
        "--batch-size",
        arguments.batch_size,
        "--local-steps",
        arguments.local_steps,
    ]
    if arguments.dataset == "synthetic":
        flags += ["--synthetic-size", arguments.synthetic_size]
    if training_type != "DiLoCo":
        flags += ["--lr", arguments.lr]
    if training_type == "PostLocalSGD":
        flags += ["--switch-epoch", arguments.switch_epoch]
    if training_type in ("LAPSGD", "LPPSGD"):
        flags += ["--workers-per-node", arguments.workers_per_node]
    return flags + shlex.split(arguments.extra)


def local_steps_label(arguments: argparse.Namespace, training_type: str, metrics: list) -> str:
    """J as the run used it: 1 for MBSGD, the phases of PostLocalSGD, the J of each epoch for AdaptiveJ."""
    if training_type == "MBSGD":
        return "1"
    if training_type == "PostLocalSGD":
        return f"1 → {arguments.local_steps} after epoch {arguments.switch_epoch}"
    if training_type == "AdaptiveJ":
        # A metrics row holds the J chosen after its epoch, so epoch e trained with row e-1's J.
        used = [arguments.local_steps] + [row["local_steps"] for row in metrics[:-1]]
        changes = [j for index, j in enumerate(used) if index == 0 or j != used[index - 1]]
        return " → ".join(str(j) for j in changes)
    return str(arguments.local_steps)


def table_row(arguments: argparse.Namespace, training_type: str, summary: dict, metrics: list) -> list:
    return [
        training_type,
        local_steps_label(arguments, training_type, metrics),
        percent(summary["final_test_accuracy"]),
        percent(summary["best_val_accuracy"]),
        summary["comm_rounds"],
        f"{summary['comm_bytes'] / 1e6:.1f}",
        f"{summary['comm_seconds']:.2f}",
        f"{summary['images_per_second']:.0f}",
        f"{100 * summary['comm_reduction']:.1f}",
        f"{summary['wall_seconds']:.1f}",
        f"{summary.get('peak_rss_mb', float('nan')):.0f}",
    ]


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    rows = []
    for training_type in arguments.types:
        run_dir = Path(arguments.runs_dir) / training_type
        try:
            summary = run_main(run_dir, arguments.ranks, main_arguments(arguments, training_type), arguments.rerun)
        except RunFailed as error:
            return fail(error)
        rows.append(table_row(arguments, training_type, summary, load_metrics(run_dir)))
    title = (
        f"Training types on {arguments.ranks} ranks: {arguments.model} on {arguments.dataset}, "
        f"{arguments.epochs} epochs, batch {arguments.batch_size} per rank"
    )
    emit(f"{header_line('local_methods', arguments)}\n\n### {title}\n\n{markdown_table(HEADERS, rows)}", arguments.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
