"""Bounds on plain settings, the YAML loader that refuses duplicate keys, and the output-folder check.

Each check raises ``ConfigError`` with one line naming the flag, before anything is written.
``NaN`` fails every bound (every comparison with it is false), so no field needs its own NaN test.
"""

from __future__ import annotations

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
    "seed": (0, 2 ** 32 - 1, True),  # what torch, numpy and Python generators all accept, offsets included
}
LIST_ITEM_BOUNDS = {"milestones": (1, 10 ** 9), "adaptive_thresholds": (0.0, 1e6)}
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
        raise error_type(f"--accumulation-steps {config.accumulation_steps} splits a batch of {config.batch_size} "
                         f"into empty micro-batches; use at most --batch-size micro-batches")
    if config.dist_url and not config.dist_url.startswith(DIST_URL_SCHEMES):
        raise error_type(f"--dist-url {config.dist_url!r} is not an init method; use tcp://host:port, "
                         f"file:///shared/path or env://")


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
