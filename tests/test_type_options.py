"""Each training type owns its options: the registry is the one list of types, every type names the
config fields it reads, one generic builder passes them, and a flag the chosen type ignores is
reported in one warning line (an error where the type cannot honour it)."""

import pytest

from dataloaders import DATASET_NAMES
from train.optimizers import OPTIMIZER_NAMES
from train.schedules import Schedule
from train.sync import SYNC_TYPES, RunShape, build_sync
from utilities.config import FIELDS, ConfigError, parse_config
from utilities.distributed import CommMeter

TINY = ["--dataset", "synthetic", "--model", "lenet5"]


def warnings(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def test_config_choices_come_from_the_registries():
    assert FIELDS["training_type"].metadata["choices"] == tuple(SYNC_TYPES)
    assert FIELDS["dataset"].metadata["choices"] == DATASET_NAMES
    assert FIELDS["optimizer"].metadata["choices"] == OPTIMIZER_NAMES


@pytest.mark.parametrize("name", list(SYNC_TYPES))
def test_every_declared_option_is_a_config_field(name):
    sync_class = SYNC_TYPES[name]
    assert set(sync_class.OPTIONS) | set(sync_class.REFUSED_OPTIONS) <= set(FIELDS)
    assert not set(sync_class.OPTIONS) & set(sync_class.REFUSED_OPTIONS)


def test_a_flag_the_type_ignores_is_named_in_one_warning_line(capsys):
    parse_config([*TINY, "--training-type", "MBSGD", "--local-steps", "3", "--overlap"])
    assert warnings(capsys) == ["warning: --training-type MBSGD ignores --local-steps, --overlap"]


def test_no_warning_for_flags_the_type_reads_or_values_left_at_their_default(capsys):
    parse_config([*TINY, "--training-type", "PLSGD", "--local-steps", "3", "--overlap", "--sync-dtype", "bf16"])
    parse_config([*TINY, "--training-type", "MBSGD", "--local-steps", "16", "--no-overlap"])  # the defaults
    parse_config([*TINY, "--training-type", "SlowMo", "--slow-momentum", "0.7", "--slow-lr", "0.9"])
    assert warnings(capsys) == []


def test_warning_is_printed_on_the_first_rank_only(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    parse_config([*TINY, "--training-type", "MBSGD", "--local-steps", "3"])
    assert warnings(capsys) == []


def test_each_type_names_the_options_of_the_others_it_ignores(capsys):
    parse_config(
        [
            *TINY,
            "--training-type",
            "LAPSGD",
            "--momentum-sync",
            "reset",
            "--prepass-epochs",
            "2",
            "--grad-compression",
            "fp16",
            "--outer-lr",
            "0.5",
        ]
    )
    assert warnings(capsys) == [
        "warning: --training-type LAPSGD ignores --grad-compression, --momentum-sync, --outer-lr, --prepass-epochs"
    ]
    parse_config([*TINY, "--training-type", "LPPSGD", "--prepass-epochs", "2"])
    assert warnings(capsys) == []


def test_a_flag_that_would_change_the_meaning_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"TorchPeriodicAverager cannot honour --overlap, --sync-dtype "):
        parse_config([*TINY, "--training-type", "TorchPeriodicAverager", "--overlap", "--sync-dtype", "bf16"])


def test_type_defaults_for_the_inner_optimizer_apply_only_when_none_is_given():
    diloco = parse_config([*TINY, "--training-type", "DiLoCo"])
    assert (diloco.optimizer, diloco.lr) == ("adamw", 1e-3)
    chosen = parse_config([*TINY, "--training-type", "DiLoCo", "--optimizer", "sgd"])
    assert (chosen.optimizer, chosen.lr) == ("sgd", 0.05)
    assert parse_config([*TINY, "--training-type", "SlowMo"]).optimizer == "sgd"


def build(argv: list, steps_per_epoch: int = 10):
    config = parse_config([*TINY, *argv])
    shape = RunShape(1, steps_per_epoch, config.epochs, Schedule(0.05, 100, kind="constant"))
    return build_sync(config.training_type, config, CommMeter(), shape)


def test_the_generic_builder_passes_each_type_its_own_settings():
    slowmo = build(["--training-type", "SlowMo", "--local-steps", "5", "--slow-momentum", "0.3", "--slow-lr", "0.8"])
    assert (slowmo.local_steps, slowmo.slow_momentum, slowmo.slow_lr) == (5, 0.3, 0.8)
    diloco = build(["--training-type", "DiLoCo", "--outer-lr", "0.4", "--outer-momentum", "0.5", "--overlap"])
    assert (diloco.outer_lr, diloco.outer_momentum, diloco.overlap) == (0.4, 0.5, True)
    post = build(["--training-type", "PostLocalSGD", "--switch-epoch", "3"], steps_per_epoch=7)
    assert post.switch_step == 21
    assert build(["--training-type", "PostLocalSGD", "--switch-step", "4"]).switch_step == 4
    adaptive = build(
        [
            "--training-type",
            "AdaptiveJ",
            "--local-steps",
            "8",
            "--min-local-steps",
            "2",
            "--max-local-steps",
            "32",
            "--adaptive-rule",
            "trend",
        ]
    )
    controller = adaptive.controller
    assert (adaptive.local_steps, controller.minimum, controller.maximum, controller.rule) == (8, 2, 32, "trend")
    mbsgd = build(["--training-type", "MBSGD", "--grad-compression", "bf16", "--bucket-cap-mb", "5"])
    assert (mbsgd.grad_compression, mbsgd.bucket_cap_mb) == ("bf16", 5.0)
    averager = build(["--training-type", "TorchPeriodicAverager", "--overlap-steps", "2", "--local-steps", "4"])
    assert (averager.local_steps, averager.overlap_steps) == (4, 1)  # --overlap-steps: not read, left at 1
    with pytest.raises(ValueError, match="--switch-epoch or --switch-step"):
        build(["--training-type", "PostLocalSGD"])
