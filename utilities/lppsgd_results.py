"""LPP-SGD's result files, and the fresh run folder its scripts expect.

LPP-SGD (``--storeresults``) writes ``results.json``, a dict index -> ``{tag, ep, val, time}``
with tags ``LR, TrainLoss, TrainAcc@1, TestLoss, TestAcc@1`` (accuracies in percent,
time in seconds since the start), and ``args.json``, its parsed arguments. Both are built
here from our per-epoch metrics rows and config, so LPP-SGD's analysis scripts read our runs.
Its scripts create a new timestamped folder per run; ``timestamped_run_dir`` gives the same.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re

import torch.distributed as dist

from utilities.checkpoint import atomic_write_bytes
from utilities.distributed import broadcast_int, is_distributed
from utilities.run_files import holds_a_run

STAMP_FORMAT = "%Y%m%d%H%M%S"  # carried between ranks as one int64


def _folder(base: str, stamp: int) -> str:
    when = datetime.datetime.strptime(str(stamp), STAMP_FORMAT)
    return f"{base}-{when:%Y%m%d-%H%M%S}"


def _newest_run(base: str):
    """The stamp of the newest ``base-YYYYmmdd-HHMMSS`` folder holding a run, or None."""
    pattern = re.compile(re.escape(os.path.basename(base)) + r"-(\d{8})-(\d{6})$")
    stamps = [
        int("".join(match.groups()))
        for path in glob.glob(glob.escape(base) + "-*")
        if (match := pattern.match(os.path.basename(path))) and holds_a_run(path)
    ]
    return max(stamps, default=None)


def _unused_stamp(base: str) -> int:
    now = datetime.datetime.now().replace(microsecond=0)
    while os.path.exists(_folder(base, int(f"{now:{STAMP_FORMAT}}"))):
        now += datetime.timedelta(seconds=1)  # two runs started within one second
    return int(f"{now:{STAMP_FORMAT}}")


def timestamped_run_dir(base: str, resume: str, device) -> str:
    """``base-YYYYmmdd-HHMMSS``: a new folder for every run; with --resume, the newest one that holds a run.
    Rank 0 chooses and every rank gets its choice, so all ranks write into one folder."""
    stamp = 0
    if not is_distributed() or dist.get_rank() == 0:
        stamp = (_newest_run(base) if resume else None) or _unused_stamp(base)
    return _folder(base, broadcast_int(stamp, device))


def results_entries(rows: list) -> list:
    """LPP-SGD's result records from our metrics rows, epoch by epoch. ``LR`` is the rate at the start of
    the epoch; test figures exist for the epochs that were evaluated (--eval-every / --test-freq)."""
    entries = []
    for row in rows:
        values = [("LR", row["lr"]), ("TrainLoss", row["train_loss"]), ("TrainAcc@1", 100.0 * row["train_accuracy"])]
        if row.get("test_loss") is not None:
            values += [("TestLoss", row["test_loss"]), ("TestAcc@1", 100.0 * row["test_accuracy"])]
        entries += [
            {"tag": tag, "ep": row["epoch"], "val": value, "time": row["wall_seconds"]} for tag, value in values
        ]
    return entries


def lppsgd_args(config, world_size: int, output_dir: str) -> dict:
    """Our settings under LPP-SGD's argument names (its utilities/args.py), as its args.json holds them."""
    per_pass = config.batch_size // config.accumulation_steps
    return {
        "training_type": config.training_type,
        "model": config.model,
        "dataset": config.dataset,
        "num_classes": config.num_classes,
        "data_dir": config.data_dir,
        "imagenet_dir": getattr(config, "imagenet_dir", None),
        "lr": config.lr,
        "baseline_lr": config.warmup_start_lr,
        "momentum": config.momentum,
        "nesterov": config.nesterov,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "epochs": config.epochs,
        "train_processing_bs": per_pass,
        "bs_multiple": config.accumulation_steps,
        "train_bs": config.batch_size,
        "test_processing_bs": config.eval_batch_size,
        "test_bs_multiple": 1,
        "test_bs": config.eval_batch_size,
        "averaging_freq": config.local_steps,
        "pre_post_epochs": max(config.switch_epoch, 0),
        "num_processes": config.workers_per_node,
        "prepassmepochs": config.prepass_epochs,
        "scheduler_type": config.lr_schedule,
        "lrmilestone": list(config.milestones),
        "gamma": config.gamma,
        "warm_up_epochs": config.warmup_epochs,
        "lars": config.optimizer == "lars",
        "eta": config.trust_coefficient,
        "cuda": config.device == "cuda",
        "dist_backend": config.backend,
        "dist_url": config.dist_url,
        "test_freq": config.eval_every,
        "storeresults": True,
        "resume": bool(config.resume),
        "commsize": world_size,
        "results_dir": os.path.abspath(output_dir),
    }


def write_results(output_dir: str, rows: list, config, world_size: int) -> None:
    """results.json and args.json beside our own outputs (main rank only)."""
    results = {index: entry for index, entry in enumerate(results_entries(rows))}
    atomic_write_bytes(os.path.join(output_dir, "results.json"), json.dumps(results).encode())
    arguments = lppsgd_args(config, world_size, output_dir)
    atomic_write_bytes(os.path.join(output_dir, "args.json"), json.dumps(arguments).encode())
