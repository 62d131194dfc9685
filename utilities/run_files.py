"""What a run writes: config.yaml, metrics.jsonl, summary.json, model.pt, optional TensorBoard.

Only the main rank writes. Every figure a report shows is read back from these files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from utilities.checkpoint import atomic_torch_save, atomic_write_bytes

RUN_MARKERS = ("metrics.jsonl", "summary.json", "checkpoints")


def code_version() -> str:
    """The git commit of the code that ran ('unknown' outside a checkout)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        result = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() + ("+dirty" if dirty else "") if result.returncode == 0 else "unknown"


def holds_a_run(directory: str) -> bool:
    return any(os.path.exists(os.path.join(directory, name)) for name in RUN_MARKERS)


class RunFiles:
    def __init__(self, directory: str, enabled: bool, tensorboard: bool = False):
        self.directory, self.enabled = directory, enabled
        self.checkpoints = os.path.join(directory, "checkpoints")
        self.writer = None
        if enabled:
            os.makedirs(directory, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(directory, "tensorboard"))

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def write_config(self, config: dict, extra: dict) -> None:
        if self.enabled:
            text = yaml.safe_dump(config, sort_keys=False) + yaml.safe_dump(extra, sort_keys=False)
            atomic_write_bytes(self.path("config.yaml"), text.encode())

    def restore_metrics(self, rows: list) -> None:
        """On resume, metrics.jsonl becomes exactly the rows the checkpoint had seen (epochs run after it are
        run again, and a row written just before a crash without its checkpoint is not kept twice)."""
        if self.enabled:
            atomic_write_bytes(self.path("metrics.jsonl"), "".join(json.dumps(row) + "\n" for row in rows).encode())

    def append_metrics(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path("metrics.jsonl"), "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch",):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def write_summary(self, summary: dict) -> None:
        if self.enabled:
            atomic_write_bytes(self.path("summary.json"), (json.dumps(summary, indent=2) + "\n").encode())

    def save_model(self, state_dict: dict) -> None:
        if self.enabled:
            atomic_torch_save(state_dict, self.path("model.pt"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(total: int, initial: int, description: str):
    """A tqdm bar on stderr when it is a terminal (rank 0); None where plain log lines read better (files, CI)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=description, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True
    )
