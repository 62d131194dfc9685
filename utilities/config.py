"""The run configuration: one typed dataclass, settable from YAML and the command line.

Precedence: dataclass defaults < ``--config FILE.yaml`` < command-line flags.
Every problem with the input raises ``ConfigError`` carrying one line that says what
is wrong and how to fix it; ``main.py`` prints that line and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Optional

import yaml

from train.sync import SYNC_TYPES
from train.sync.options import apply_type_defaults, ignored_options, ignored_warning
from utilities import config_aliases, config_checks
from utilities.config_fields import (  # noqa: F401 (the names other modules import from here)
    DATASETS,
    FIELDS,
    MODELS,
    OPTIMIZERS,
    TRAINING_TYPES,
    Config,
    ConfigError,
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(f: dataclasses.Field):
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.name in ("num_classes",):
        return int
    if f.name in ("warmup_start_lr",):
        return float
    if f.name in ("overlap_steps", "fragments"):  # an integer unless "auto"
        return int
    return type(default)


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise ConfigError."""
    f = FIELDS[name]
    if isinstance(f.default, list) or f.default_factory is not dataclasses.MISSING:
        item_type = float if name == "adaptive_thresholds" else int
        pieces = value if isinstance(value, (list, tuple)) else [value]
        items = [item for piece in pieces for item in str(piece).replace(",", " ").split()]
        try:
            return [item_type(v) for v in items]
        except (TypeError, ValueError):
            raise ConfigError(f"{_flag(name)}: expected a list of {item_type.__name__}s, got {value!r}")
    if value is None:
        if f.default is None:
            return None
        raise ConfigError(f"{_flag(name)}: a value is required")
    if name in ("overlap_steps", "fragments") and str(value).strip().lower() == "auto":
        return "auto"
    kind = _scalar_type(f)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{_flag(name)}: expected true or false, got {value!r}")
    if isinstance(value, bool):  # YAML's true/false is no number
        raise ConfigError(f"{_flag(name)}: expected {kind.__name__}, got {value!r}")
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        converted = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{_flag(name)}: expected {kind.__name__}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and converted not in choices:
        raise ConfigError(f"{_flag(name)}: unknown value {converted!r}; choose one of: {', '.join(choices)}")
    return converted


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting."""

    def error(self, message: str):
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="main.py",
        description="Distributed trainer: synchronous, local and asynchronous SGD on real ranks.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML file of settings; command-line flags override it")
    for f in dataclasses.fields(Config):
        help_text = f.metadata["help"]
        if f.metadata["choices"]:
            help_text += f" ({', '.join(f.metadata['choices'])})"
        if not isinstance(f.default, bool) and f.default_factory is dataclasses.MISSING:
            help_text += f"; default {f.default}"
        if isinstance(f.default, bool):
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif f.name == "resume":  # LPP-SGD's bare --resume switch means --resume auto
            parser.add_argument(
                _flag(f.name), dest=f.name, metavar="CHECKPOINT", nargs="?", const="auto", help=help_text
            )
        elif f.default_factory is not dataclasses.MISSING:
            parser.add_argument(_flag(f.name), dest=f.name, nargs="+", help=help_text)
        else:
            parser.add_argument(_flag(f.name), dest=f.name, metavar=f.name.upper(), help=help_text)
    config_aliases.add_alias_flags(parser)
    return parser


def load_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=config_checks.UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found")
    except IsADirectoryError:
        raise ConfigError(f"--config {path} is a folder; give the path of a YAML file")
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not UTF-8 text; save it as UTF-8 YAML")
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot be read ({error.strerror})")
    except config_checks.DuplicateKey as error:
        raise ConfigError(f"--config {path}: {error}")
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ConfigError(f"--config {path}: not valid YAML{line}; check indentation and colons")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of setting: value at the top level")
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"--config {path}: unknown key '{key}'; see `python main.py --help` for the settings")
        settings[name] = value
    return settings


def parse_config(argv: Optional[list] = None) -> Config:
    """Build the Config from defaults, an optional YAML file and the command line."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unknown argument {unknown[0]!r}; see `python main.py --help`")
    given = vars(args)
    settings = load_yaml(given.pop("config")) if "config" in given else {}
    ignored = config_aliases.ignored_flags(given, base=settings)
    settings.update(config_aliases.translate(given, base=settings))
    settings = config_aliases.normalise_names(settings)
    config = Config(**{name: _coerce(name, value) for name, value in settings.items()})
    config.training_type = config_aliases.post_local_type(config.training_type, config.switch_epoch)
    apply_type_defaults(SYNC_TYPES[config.training_type], config, given=settings)
    if config.optimizer in ("lars", "lamb") and "warmup_epochs" not in settings:
        # Large-batch recipes warm up (Goyal et al. use 5 epochs); capped at a fifth of short runs.
        config.warmup_epochs = min(5.0, config.epochs / 5)
    validate(config)
    try:
        ignored_by_type = ignored_options(config.training_type, SYNC_TYPES, config, Config())
    except ValueError as error:  # a type-specific flag the chosen type cannot honour
        raise ConfigError(str(error)) from None
    if config_aliases.is_first_rank_by_environment():
        for warning in (
            config_aliases.ignored_warning(ignored),
            ignored_warning(config.training_type, ignored_by_type),
        ):
            if warning:
                print(warning, file=sys.stderr)
    return config


def validate(config: Config) -> None:
    """Reject values no run could use, with one line naming the flag."""
    config_checks.check_basic_values(config, ConfigError)
    config_checks.check_values(config, ConfigError)
