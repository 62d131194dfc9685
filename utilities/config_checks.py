"""Bounds on plain settings, the YAML loader that refuses duplicate keys, and the output-folder check.

Each check raises ``ConfigError`` with one line naming the flag, before anything is written.
``NaN`` fails every bound (every comparison with it is false), so no field needs its own NaN test.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import yaml

# Beyond this a float32 parameter step overflows (float32 tops out near 3.4e38, and a scaled
# LR or a gradient above 1 multiplies it further); larger values are typos, never settings.
HUGE = 1e30

# field: (lowest, highest, lowest itself allowed). Applied after the older checks in config.validate.
BOUNDS = {
    "lr": (0.0, HUGE, False),
    "warmup_start_lr": (0.0, HUGE, True),
    "gamma": (0.0, HUGE, False),
    "warmup_epochs": (0.0, 1e6, True),
    "dirichlet_alpha": (0.0, 1e6, True),
    "weight_decay": (0.0, HUGE, True),
    "trust_coefficient": (0.0, HUGE, False),
    "slow_lr": (0.0, HUGE, True),
    "outer_lr": (0.0, HUGE, True),
    "bucket_cap_mb": (0.0, 1e6, False),
    "timeout": (1.0, 1e7, True),  # below a second no rendezvous completes; timedelta overflows far above 1e7
    "seed": (0, 2**32 - 1, True),  # what torch, numpy and Python generators all accept, offsets included
}
LIST_ITEM_BOUNDS = {"milestones": (1, 10**9), "adaptive_thresholds": (0.0, 1e6)}
DIST_URL_SCHEMES = ("tcp://", "file://", "env://")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _outside(value, low, high, low_allowed: bool) -> bool:
    inside = (low <= value if low_allowed else low < value) and value <= high
    return not inside  # also true for NaN


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range_text(low, high, low_allowed: bool) -> str:
    return f"{'[' if low_allowed else '('}{_number(low)}, {_number(high)}]"


def check_basic_values(config, error_type) -> None:
    """Counts, ratios and finite numbers no run could use otherwise (the first checks config.validate runs)."""
    if config.overlap_steps != "auto" and config.overlap_steps < 1:
        raise error_type(f"--overlap-steps must be at least 1 or auto, got {config.overlap_steps}")
    if config.fragments != "auto" and config.fragments < 1:
        raise error_type(f"--fragments must be at least 1 or auto, got {config.fragments}")
    positive = (
        "epochs",
        "batch_size",
        "eval_batch_size",
        "accumulation_steps",
        "max_micro_batch",
        "local_steps",
        "min_local_steps",
        "max_local_steps",
        "reference_batch",
        "eval_every",
        "log_every",
        "synthetic_size",
        "workers_per_node",
        "image_size",
    )
    for name in positive:
        if getattr(config, name) < 1:
            raise error_type(f"{_flag(name)} must be at least 1, got {getattr(config, name)}")
    non_negative = (
        "dirichlet_alpha",
        "max_steps",
        "total_steps",
        "ghost_batch_size",
        "weight_decay",
        "warmup_epochs",
        "keep_checkpoints",
        "epochs_per_job",
        "loader_workers",
        "prepass_epochs",
        "slow_lr",
        "outer_lr",
    )
    for name in non_negative:
        if getattr(config, name) < 0:
            raise error_type(f"{_flag(name)} must not be negative, got {getattr(config, name)}")
    for name in ("lr", "timeout", "weight_decay", "momentum", "gamma", "slow_lr", "outer_lr", "trust_coefficient"):
        if not math.isfinite(getattr(config, name)):
            raise error_type(f"{_flag(name)} must be a finite number, got {getattr(config, name)}")
    if not config.lr > 0:
        raise error_type(f"--lr must be positive, got {config.lr}")
    for name in ("val_ratio", "test_ratio"):
        if not 0 < getattr(config, name) < 1:
            raise error_type(f"{_flag(name)} must be between 0 and 1 (exclusive), got {getattr(config, name)}")
    for name in ("momentum", "slow_momentum", "outer_momentum"):
        if not 0 <= getattr(config, name) < 1:
            raise error_type(f"{_flag(name)} must be in [0, 1), got {getattr(config, name)}")
    if config.min_local_steps > config.max_local_steps:
        raise error_type("--min-local-steps must not exceed --max-local-steps")
    if config.timeout <= 0:
        raise error_type(f"--timeout must be positive, got {config.timeout}")
    if config.nesterov and config.momentum == 0:
        raise error_type("--nesterov needs --momentum > 0")
    if config.hierarchy and len(config.hierarchy) != 2:
        raise error_type("--hierarchy takes two values: J_node J_global")
    if len(config.adaptive_thresholds) != 3:
        raise error_type("--adaptive-thresholds takes three values: early middle late")


def check_values(config, error_type) -> None:
    """Per-field bounds, list items, and settings that only make sense together."""
    for name, (low, high, low_allowed) in BOUNDS.items():
        value = getattr(config, name)
        if value is not None and _outside(value, low, high, low_allowed):
            raise error_type(f"{_flag(name)} must be in {_range_text(low, high, low_allowed)}, got {value}")
    for name, (low, high) in LIST_ITEM_BOUNDS.items():
        values = getattr(config, name)
        bad = [v for v in values if _outside(v, low, high, True)]
        if bad:
            raise error_type(f"{_flag(name)}: every value must be in [{_number(low)}, {_number(high)}], got {bad[0]}")
    if any(later <= earlier for earlier, later in zip(config.milestones, config.milestones[1:])):
        raise error_type(f"--milestones must be increasing epochs, got {config.milestones}")
    if config.accumulation_steps > config.batch_size:
        raise error_type(
            f"--accumulation-steps {config.accumulation_steps} splits a batch of {config.batch_size} "
            f"into empty micro-batches; use at most --batch-size micro-batches"
        )
    if config.dist_url and not config.dist_url.startswith(DIST_URL_SCHEMES):
        raise error_type(
            f"--dist-url {config.dist_url!r} is not an init method; use tcp://host:port, file:///shared/path or env://"
        )


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice is an error instead of the last one winning."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKey(f"key '{key}' appears twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class DuplicateKey(ValueError):
    pass


def unusable_output_dir(directory: str) -> Optional[str]:
    """Why ``directory`` cannot hold a run (None when it can), found without creating anything."""
    path = os.path.abspath(directory)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"--output-dir {directory} is a file; choose a folder"
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"--output-dir {directory} lies under the file {existing}; choose a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--output-dir {directory}: {existing} is not writable; choose a folder you can write to"
    return None
