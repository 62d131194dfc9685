"""Unit tests of the run configuration: defaults, YAML, command line, LPP-SGD aliases, validation.

Every field must be settable from the command line and from ``--config FILE.yaml`` (the
command line winning), and every bad input must end as one ``ConfigError`` line naming the
flag (DESIGN.md, style note 5). ``parse_config`` is always given an explicit argv: with
``None`` it would read pytest's own ``sys.argv``.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import config_error, write_yaml
from utilities.config import FIELDS, Config, parse_config

REPO_ROOT = Path(__file__).resolve().parents[1]

# One valid value per field that differs from its default; the keys must be exactly the
# fields, so a new field without a test here fails test_every_field_has_a_test_value.
NON_DEFAULT = {
    "training_type": "LAPSGD",  # the type that accepts every field below (workers_per_node included)
    "dataset": "mnist",
    "data_dir": "/somewhere/data",
    "download": False,
    "synthetic_size": 512,
    "test_ratio": 0.25,
    "val_ratio": 0.2,
    "dirichlet_alpha": 0.5,
    "augment": False,
    "num_classes": 100,
    "imagenet_dir": "/somewhere/imagenet",
    "image_size": 160,
    "loader_workers": 8,
    "model": "resnet18",
    "ghost_batch_size": 32,
    "epochs": 3,
    "max_steps": 100,
    "total_steps": 200,
    "batch_size": 64,
    "eval_batch_size": 500,
    "accumulation_steps": 2,
    "max_micro_batch": 1024,
    "optimizer": "lamb",
    "lr": 0.2,
    "momentum": 0.5,
    "nesterov": True,
    "weight_decay": 1e-4,
    "trust_coefficient": 0.02,
    "lars_exclude_bias_norm": False,
    "lr_schedule": "multistep",
    "milestones": [30, 60],
    "gamma": 0.2,
    "warmup_epochs": 2.5,
    "warmup_start_lr": 0.01,
    "lr_scaling": "sqrt",
    "reference_batch": 512,
    "local_steps": 8,
    "average_buffers": False,
    "momentum_sync": "average",
    "switch_epoch": 3,
    "switch_step": 1000,
    "slow_momentum": 0.7,
    "slow_lr": 0.5,
    "outer_lr": 0.3,
    "outer_momentum": 0.8,
    "elastic_alpha": 0.3,
    "adaptive_rule": "trend",
    "adaptive_thresholds": [0.1, 0.01, 0.001],
    "min_local_steps": 2,
    "max_local_steps": 32,
    "workers_per_node": 4,
    "prepass_epochs": 2,
    "seed": 7,
    "deterministic": True,
    "amp": "bf16",
    "output_dir": "runs/elsewhere",
    "timestamped_output_dir": True,
    "store_results": True,
    "resume": "auto",
    "overwrite": True,
    "allow_config_change": True,
    "eval_every": 2,
    "log_every": 10,
    "tensorboard": True,
    "device": "cpu",
    "backend": "gloo",
    "dist_url": "tcp://10.0.0.1:23456",
    "timeout": 60.0,
    "comm_thread_policy": "normal",
    "keep_checkpoints": 3,
    "epochs_per_job": 2,
    "on_nan": "skip",
    "check_replicas": True,
    "grad_compression": "fp16",
    "bucket_cap_mb": 5.0,
    "overlap": True,
    "overlap_steps": 3,
    "fragments": 2,
    "sync_dtype": "bf16",
    "hierarchy": [2, 8],
    "ranks_per_node": 2,
}


def flag(name):
    return "--" + name.replace("_", "-")


# Fields only some training types accept: set together with one of those.
COMPANIONS = {"workers_per_node": ["--training-type", "LAPSGD"]}


def cli_args(name, value):
    """The command-line words that set field ``name`` to ``value``."""
    if isinstance(value, bool):
        return [flag(name) if value else "--no-" + name.replace("_", "-")]
    if isinstance(value, list):
        return [flag(name), *map(str, value)]
    return [flag(name), str(value)]


# ----------------------------------------------------------------------------- defaults


def test_defaults_equal_the_dataclass():
    assert parse_config([]) == Config()


def test_some_defaults_by_value():
    config = parse_config([])
    assert config.training_type == "MBSGD"
    assert config.dataset == "cifar10"
    assert config.batch_size == 128
    assert config.lr == 0.05
    assert config.optimizer == "sgd"
    assert config.download is True and config.augment is True
    assert config.milestones == [] and config.num_classes is None and config.warmup_start_lr is None
    assert config.resolved_output_dir() == "runs/MBSGD-cifar10-lenet5w"
    assert (config.overlap_steps, config.fragments) == ("auto", "auto")
    assert parse_config(["--fragments", "AUTO", "--overlap-steps", "3"]).fragments == "auto"


def test_list_defaults_are_not_shared_between_configs():
    first, second = Config(), Config()
    first.adaptive_thresholds.append(1.0)
    assert second.adaptive_thresholds == [0.02, 0.005, 0.001]


def test_every_field_has_a_test_value():
    assert set(NON_DEFAULT) == set(FIELDS)
    defaults = Config()
    for name, value in NON_DEFAULT.items():
        assert getattr(defaults, name) != value, f"{name}: the test value equals the default"


# ----------------------------------------------------------------------------- every field


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_every_field_settable_from_command_line(name):
    config = parse_config([*cli_args(name, NON_DEFAULT[name]), *COMPANIONS.get(name, [])])
    assert getattr(config, name) == NON_DEFAULT[name]
    assert type(getattr(config, name)) is type(NON_DEFAULT[name])


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_every_field_settable_from_yaml(name, tmp_path):
    path = write_yaml(tmp_path, {name: NON_DEFAULT[name]})
    config = parse_config(["--config", path, *COMPANIONS.get(name, [])])
    assert getattr(config, name) == NON_DEFAULT[name]
    assert type(getattr(config, name)) is type(NON_DEFAULT[name])


def test_all_fields_at_once_from_yaml(tmp_path):
    config = parse_config(["--config", write_yaml(tmp_path, NON_DEFAULT)])
    assert config.to_dict() == NON_DEFAULT


def test_yaml_keys_may_use_dashes(tmp_path):
    config = parse_config(["--config", write_yaml(tmp_path, "batch-size: 32\nlr-schedule: constant\n")])
    assert config.batch_size == 32 and config.lr_schedule == "constant"


def test_command_line_wins_over_yaml(tmp_path):
    path = write_yaml(tmp_path, {"epochs": 3, "lr": 0.2, "download": False, "milestones": [5], "model": "mlp"})
    config = parse_config(["--config", path, "--epochs", "4", "--download", "--milestones", "7", "8"])
    assert config.epochs == 4
    assert config.download is True
    assert config.milestones == [7, 8]
    assert config.lr == 0.2 and config.model == "mlp"  # not overridden: YAML stays


def test_flag_order_does_not_matter_for_precedence(tmp_path):
    path = write_yaml(tmp_path, {"epochs": 3})
    assert parse_config(["--epochs", "4", "--config", path]).epochs == 4


def test_alias_on_command_line_wins_over_yaml(tmp_path):
    path = write_yaml(tmp_path, {"local_steps": 8})
    assert parse_config(["--config", path, "--averaging_freq", "4"]).local_steps == 4


def test_empty_yaml_gives_defaults(tmp_path):
    assert parse_config(["--config", write_yaml(tmp_path, "")]) == Config()


def test_yaml_list_given_as_scalar(tmp_path):
    assert parse_config(["--config", write_yaml(tmp_path, "milestones: 30\n")]).milestones == [30]


# ----------------------------------------------------------------------------- YAML errors


def test_unknown_yaml_key_rejected_naming_the_key(tmp_path):
    path = write_yaml(tmp_path, {"epochs": 2, "learning_rate": 0.1})
    message = config_error(["--config", path])
    assert "learning_rate" in message and path in message


def test_alias_names_are_not_yaml_keys(tmp_path):
    message = config_error(["--config", write_yaml(tmp_path, {"averaging_freq": 4})])
    assert "averaging_freq" in message


def test_yaml_that_does_not_parse_rejected(tmp_path):
    path = write_yaml(tmp_path, "epochs: [1, 2\nlr: 0.1\n")
    message = config_error(["--config", path])
    assert path in message and "YAML" in message


@pytest.mark.parametrize("text", ["- epochs\n- lr\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_rejected(tmp_path, text):
    message = config_error(["--config", write_yaml(tmp_path, text)])
    assert "mapping" in message


def test_missing_yaml_file_rejected(tmp_path):
    message = config_error(["--config", str(tmp_path / "absent.yaml")])
    assert "absent.yaml" in message and "not found" in message


@pytest.mark.parametrize(
    "text, flag_name",
    [
        ("epochs: 2.5\n", "--epochs"),
        ("epochs: null\n", "--epochs"),
        ("lr: [1, 2]\n", "--lr"),
        ("download: maybe\n", "--download"),
        ("milestones: [a, b]\n", "--milestones"),
        ("model: nope\n", "--model"),
        ("val_ratio: 1.5\n", "--val-ratio"),
    ],
)
def test_bad_yaml_values_rejected_naming_the_flag(tmp_path, text, flag_name):
    assert flag_name in config_error(["--config", write_yaml(tmp_path, text)])


@pytest.mark.parametrize(
    "text, flag_name", [("epochs: true\n", "--epochs"), ("lr: true\n", "--lr"), ("batch_size: true\n", "--batch-size")]
)
def test_yaml_boolean_for_a_number_rejected(tmp_path, text, flag_name):
    # Style note 5: wrong types fail loudly. `epochs: true` must not silently become 1 epoch.
    assert flag_name in config_error(["--config", write_yaml(tmp_path, text)])


# ----------------------------------------------------------------------------- CLI errors


@pytest.mark.parametrize(
    "argv, flag_name",
    [
        (["--lr", "-1"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--val-ratio", "1.5"], "--val-ratio"),
        (["--val-ratio", "0"], "--val-ratio"),
        (["--test-ratio", "1"], "--test-ratio"),
        (["--local-steps", "0"], "--local-steps"),
        (["--training-type", "Nope"], "--training-type"),
        (["--dataset", "nope"], "--dataset"),
        (["--model", "nope"], "--model"),
        (["--optimizer", "nope"], "--optimizer"),
        (["--epochs", "abc"], "--epochs"),
        (["--epochs", "0"], "--epochs"),
        (["--momentum", "1"], "--momentum"),
        (["--weight-decay", "-0.1"], "--weight-decay"),
        (["--timeout", "0"], "--timeout"),
        (["--milestones", "a"], "--milestones"),
        (["--workers-per-node", "0"], "--workers-per-node"),
        (["--train_processing_bs", "abc"], "--train_processing_bs"),
        (["--scheduler-type", "linear"], "--scheduler-type"),
        (["--fragments", "0"], "--fragments"),
        (["--fragments", "some"], "--fragments"),
        (["--overlap-steps", "0"], "--overlap-steps"),
    ],
)
def test_bad_values_rejected_naming_the_flag(argv, flag_name):
    assert flag_name in config_error(argv)


@pytest.mark.parametrize("argv, flag_name", [(["--lr", "inf"], "--lr"), (["--timeout", "nan"], "--timeout")])
def test_non_finite_numbers_rejected(argv, flag_name):
    # validate() compares with `<= 0`, which nan passes; `--timeout nan` later fails inside
    # init_distributed with "cannot convert float NaN to integer", naming no flag.
    assert flag_name in config_error(argv)


def test_choice_error_lists_the_choices():
    message = config_error(["--training-type", "Nope"])
    assert "Nope" in message and "MBSGD" in message and "DiLoCo" in message


def test_cross_field_checks():
    assert "--min-local-steps" in config_error(["--min-local-steps", "10", "--max-local-steps", "5"])
    assert "--nesterov" in config_error(["--nesterov", "--momentum", "0"])
    assert "--adaptive-thresholds" in config_error(["--adaptive-thresholds", "0.1", "0.2"])


@pytest.mark.parametrize("argv", [["--bogus"], ["--bogus", "3"], ["stray"], ["--epoch", "3"]])
def test_unknown_command_line_argument_rejected(argv):
    assert argv[0] in config_error(argv)


def test_flag_without_value_rejected():
    assert "--epochs" in config_error(["--epochs"])


def test_non_integer_switch_epoch_is_a_config_error():
    # normalise_names calls int() on switch_epoch before it is type-checked: a bare ValueError
    # escapes parse_config and main.py prints a traceback instead of one 'error:' line.
    assert "--switch-epoch" in config_error(["--training-type", "PLSGD", "--switch-epoch", "abc"])


# ----------------------------------------------------------------------------- booleans and lists


@pytest.mark.parametrize("name", ["download", "augment", "nesterov", "tensorboard", "average_buffers"])
def test_boolean_flags_both_ways(name):
    dashed = name.replace("_", "-")
    assert getattr(parse_config([f"--{dashed}"]), name) is True
    assert getattr(parse_config([f"--no-{dashed}"]), name) is False


def test_last_boolean_flag_wins():
    assert parse_config(["--download", "--no-download"]).download is False
    assert parse_config(["--no-augment", "--augment"]).augment is True


def test_list_flags():
    assert parse_config(["--milestones", "30", "60"]).milestones == [30, 60]
    assert parse_config(["--adaptive-thresholds", "0.3", "0.2", "0.1"]).adaptive_thresholds == [0.3, 0.2, 0.1]


# ----------------------------------------------------------------------------- main.py exit


def test_main_reports_bad_flag_in_one_line_with_exit_code_2():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), "--epochs", "abc"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "--epochs" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
