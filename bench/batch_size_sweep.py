"""Large-batch training: accuracy and time per epoch over global batch sizes and optimizers, one table.

    python bench/batch_size_sweep.py                                  # synthetic, LeNet-5, 2 ranks: minutes
    python bench/batch_size_sweep.py --batch-sizes 128 256 --optimizers sgd lars --epochs 1   # smoke check
    python bench/batch_size_sweep.py --dataset cifar10 --epochs 30 --base-lr lars=2 --out sweep.md

Every (optimizer, global batch) pair is one MBSGD run of main.py on --ranks ranks with a per-rank
batch of global / ranks, its LR scaled from the base LR at --reference-batch (256) by the
optimizer's rule, after --warmup-epochs of linear warmup (Goyal et al. 2017), then cosine decay.

Default base LRs (at global batch 256) and scaling rules:
  sgd    0.05  linear   (Goyal et al. 2017: LR proportional to batch)
  adamw  1e-3  sqrt     (Adam-type steps are already normalised; sqrt is the usual rule, Hoffer et al. 2017)
  lars   1.0   sqrt     LARS multiplies the LR by the trust ratio eta * ||w|| / ||g|| (eta = --trust-coefficient,
                        0.001), so its LR is ~1000x an SGD LR: a step moves a layer by about LR * 0.001 of its norm.
  lamb   1e-2  sqrt     (You et al. 2020 scale LAMB's LR by sqrt(batch)); LAMB's step is LR times the layer norm.
The LARS and LAMB values come from a small search in this sweep's default setting (synthetic, LeNet-5,
2 ranks, 2 epochs, 1 warmup epoch; final test accuracy %, one seed each, so differences of several points
are noise):
  lars base 0.5 / 1 / 2 / 5 at global 256: 53 / 59 / 68 / 10 (chance); at 2048 with sqrt: 32 / 29 / 13 / 10,
  with linear: 29 / 17 / 9 / 10; base 3 without scaling: 39 (256), 23 (2048); base 1 sqrt at 512 / 1024 / 8192:
  34 / 47 / 11, base 2 sqrt: 45 / 18 / 22. Base 1 with sqrt is the most even over the batch sizes; from base 3
  up LARS trains badly or diverges (likely because biases and norm scales step with the plain LR, no trust ratio).
  lamb 2e-3 sqrt: 45 (256), 28 (2048); 1e-2 sqrt: 89 (256), 56 (2048). For reference, sgd 0.05 linear: 85, 24;
  adamw 1e-3 sqrt: 88, 61.
Override with --base-lr OPT=LR and --scaling OPT=RULE.

A combination whose per-rank batch does not fit the training split (main.py refuses it) or whose
training diverges is listed with a note instead of ending the sweep.
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
    load_run_config,
    markdown_table,
    percent,
    run_main,
)

OPTIMIZERS = ("sgd", "adamw", "lars", "lamb")
BASE_LR = {"sgd": 0.05, "adamw": 1e-3, "lars": 1.0, "lamb": 1e-2}
SCALING = {"sgd": "linear", "adamw": "sqrt", "lars": "sqrt", "lamb": "sqrt"}
REFERENCE_BATCH = 256
HEADERS = [
    "optimizer",
    "global batch",
    "peak LR",
    "steps",
    "final test accuracy (%)",
    "best val accuracy (%)",
    "seconds per epoch",
    "note",
]
# Failures that are results of the sweep, not of the code: the batch does not fit, or the LR is too large.
SKIPPABLE = {"fewer than one batch": "batch larger than a rank's shard", "diverged": "diverged"}


def optimizer_values(kind):
    """argparse type for OPT=VALUE pairs such as lars=2 or sgd=linear."""

    def parse(text: str):
        name, separator, value = text.partition("=")
        if not separator or name not in OPTIMIZERS:
            raise argparse.ArgumentTypeError(
                f"expected OPT=VALUE with OPT one of {', '.join(OPTIMIZERS)}, got {text!r}"
            )
        return name, kind(value)

    return parse


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[128, 256, 512, 1024, 2048, 4096, 8192],
        help="GLOBAL batch sizes (all ranks together)",
    )
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument(
        "--synthetic-size",
        type=int,
        default=20000,
        help="training images of --dataset synthetic (20000 leaves 4 steps of 8192 in 2 epochs)",
    )
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument(
        "--base-lr",
        type=optimizer_values(float),
        nargs="+",
        default=[],
        help=f"base LR at global batch {REFERENCE_BATCH}, e.g. lars=2 (defaults: {BASE_LR})",
    )
    parser.add_argument(
        "--scaling",
        type=optimizer_values(str),
        nargs="+",
        default=[],
        help=f"LR scaling rule none/linear/sqrt, e.g. adamw=linear (defaults: {SCALING})",
    )
    parser.add_argument("--plot", help="accuracy-versus-batch figure (default <runs-dir>/accuracy_vs_batch.png)")
    add_common_arguments(parser, "batch_size_sweep")
    arguments = parser.parse_args(argv)
    for batch in arguments.batch_sizes:
        if batch % arguments.ranks:
            parser.error(f"--batch-sizes: {batch} is not divisible by --ranks {arguments.ranks}")
    arguments.base_lr = {**BASE_LR, **dict(arguments.base_lr)}
    arguments.scaling = {**SCALING, **dict(arguments.scaling)}
    arguments.plot = arguments.plot or str(Path(arguments.runs_dir) / "accuracy_vs_batch.png")
    return arguments


def main_arguments(arguments: argparse.Namespace, optimizer: str, global_batch: int) -> list:
    flags = [
        "--training-type",
        "MBSGD",
        "--dataset",
        arguments.dataset,
        "--data-dir",
        arguments.data_dir,
        "--model",
        arguments.model,
        "--epochs",
        arguments.epochs,
        "--batch-size",
        global_batch // arguments.ranks,
        "--optimizer",
        optimizer,
        "--lr",
        arguments.base_lr[optimizer],
        "--lr-scaling",
        arguments.scaling[optimizer],
        "--reference-batch",
        REFERENCE_BATCH,
        "--warmup-epochs",
        arguments.warmup_epochs,
    ]
    if arguments.dataset == "synthetic":
        flags += ["--synthetic-size", arguments.synthetic_size]
    return flags + shlex.split(arguments.extra)


def run_one(arguments: argparse.Namespace, optimizer: str, global_batch: int) -> dict:
    """One combination's figures; a skippable failure gives a row with a note and no figures."""
    run_dir = Path(arguments.runs_dir) / f"{optimizer}-b{global_batch}"
    try:
        summary = run_main(
            run_dir, arguments.ranks, main_arguments(arguments, optimizer, global_batch), arguments.rerun
        )
    except RunFailed as error:
        note = next((note for sign, note in SKIPPABLE.items() if sign in str(error)), None)
        if note is None:
            raise
        print(f"  skipped: {error}", file=sys.stderr)
        return {"optimizer": optimizer, "global_batch": global_batch, "note": note}
    return {
        "optimizer": optimizer,
        "global_batch": global_batch,
        "note": "",
        "peak_lr": load_run_config(run_dir)["run"]["peak_lr"],
        "steps": summary["steps"],
        "accuracy": summary["final_test_accuracy"],
        "best_val": summary["best_val_accuracy"],
        "seconds_per_epoch": summary["train_seconds"] / summary["epochs"],
    }


def table_row(result: dict) -> list:
    if result["note"]:
        return [result["optimizer"], result["global_batch"], "n/a", "n/a", "n/a", "n/a", "n/a", result["note"]]
    return [
        result["optimizer"],
        result["global_batch"],
        f"{result['peak_lr']:.4g}",
        result["steps"],
        percent(result["accuracy"]),
        percent(result["best_val"]),
        f"{result['seconds_per_epoch']:.2f}",
        "",
    ]


def plot(results: list, arguments: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    for optimizer in arguments.optimizers:
        points = [
            (r["global_batch"], 100 * r["accuracy"]) for r in results if r["optimizer"] == optimizer and not r["note"]
        ]
        if points:
            axes.plot(*zip(*points), marker="o", label=optimizer)
    axes.set_xscale("log", base=2)
    axes.set_xticks(arguments.batch_sizes, [str(batch) for batch in arguments.batch_sizes])
    axes.minorticks_off()
    axes.set_xlabel("global batch size")
    axes.set_ylabel("final test accuracy (%)")
    axes.set_title(f"{arguments.model} on {arguments.dataset}, {arguments.epochs} epochs, {arguments.ranks} ranks")
    axes.grid(True, alpha=0.3)
    axes.legend()
    Path(arguments.plot).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(arguments.plot, dpi=120, bbox_inches="tight")
    pyplot.close(figure)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    try:
        results = [
            run_one(arguments, optimizer, batch)
            for optimizer in arguments.optimizers
            for batch in arguments.batch_sizes
        ]
    except RunFailed as error:
        return fail(error)
    plot(results, arguments)
    title = (
        f"MBSGD on {arguments.ranks} ranks: {arguments.model} on {arguments.dataset}, {arguments.epochs} epochs, "
        f"{arguments.warmup_epochs:g} warmup epoch(s), LR scaled from global batch {REFERENCE_BATCH}"
    )
    emit(
        f"{header_line('batch_size_sweep', arguments)}\n\n### {title}\n\n"
        f"{markdown_table(HEADERS, [table_row(result) for result in results])}\n\nPlot: {arguments.plot}",
        arguments.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
