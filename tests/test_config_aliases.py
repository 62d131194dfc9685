"""LPP-SGD's flags mapped onto this trainer's settings, and DiLoCo's defaults."""

import dataclasses
import re

import pytest

from tests.support import config_error, write_yaml
from utilities import config_aliases
from utilities.config import FIELDS, Config, ConfigError, parse_config

# ----------------------------------------------------------------------------- LPP-SGD aliases


def test_alias_cuda():
    assert parse_config(["--cuda"]).device == "cuda"


def test_alias_batch_from_processing_bs_and_multiple():
    config = parse_config(["--train_processing_bs", "32", "--bs_multiple", "4"])
    assert config.batch_size == 128
    assert config.accumulation_steps == 4


def test_alias_train_processing_bs_alone():
    config = parse_config(["--train_processing_bs", "32"])
    assert config.batch_size == 32 and config.accumulation_steps == 1


def test_alias_bs_multiple_uses_the_batch_size_from_yaml(tmp_path):
    # `--bs_multiple` multiplies the per-pass batch, also one given in YAML (not the default 128).
    from_yaml = parse_config(["--config", write_yaml(tmp_path, {"batch_size": 32}), "--bs_multiple", "4"])
    assert from_yaml.batch_size == 128
    assert from_yaml.accumulation_steps == 4


def test_bs_multiple_with_our_batch_size_flag_is_ambiguous_and_rejected():
    with pytest.raises(ConfigError, match="--bs_multiple"):
        parse_config(["--batch-size", "32", "--bs_multiple", "4"])


def test_alias_test_processing_bs():
    assert parse_config(["--test_processing_bs", "250"]).eval_batch_size == 250


@pytest.mark.parametrize(
    "alias, ours",
    [("res20", "resnet20"), ("res18", "resnet18"), ("resnet", "resnet20"), ("lenet", "lenet5"), ("vgg", "vgg11")],
)
def test_alias_model_names(alias, ours):
    assert parse_config(["--model", alias]).model == ours


def test_alias_model_name_in_yaml(tmp_path):
    assert parse_config(["--config", write_yaml(tmp_path, {"model": "res20"})]).model == "resnet20"


@pytest.mark.parametrize("alias, ours", [("mstep", "multistep"), ("const", "multistep"), ("cosine", "cosine")])
def test_alias_scheduler_type(alias, ours):
    # LPP-SGD: anything but cosine is MultiStep over --lrmilestone (its default 150 225) with --gamma.
    assert parse_config(["--scheduler-type", alias]).lr_schedule == ours


@pytest.mark.parametrize("alias", ["mstep", "const"])
def test_multistep_scheduler_types_use_lppsgd_milestones_unless_given(alias, tmp_path):
    assert parse_config(["--scheduler-type", alias]).milestones == [150, 225]
    assert parse_config(["--scheduler-type", alias, "--lrmilestone", "30", "60"]).milestones == [30, 60]
    assert parse_config(["--scheduler-type", alias, "--milestones", "7"]).milestones == [7]
    path = write_yaml(tmp_path, {"milestones": [9]})
    assert parse_config(["--config", path, "--scheduler-type", alias]).milestones == [9]
    assert parse_config(["--scheduler-type", "cosine"]).milestones == []


def test_alias_scheduler_type_contradicting_lr_schedule_rejected():
    assert "--scheduler-type" in config_error(["--scheduler-type", "mstep", "--lr-schedule", "cosine"])
    assert parse_config(["--scheduler-type", "mstep", "--lr-schedule", "multistep"]).lr_schedule == "multistep"


def test_alias_lrmilestone_gamma_warmup_baseline():
    config = parse_config(
        ["--lrmilestone", "10", "20", "--gamma", "0.5", "--warm_up_epochs", "5", "--baseline_lr", "0.01"]
    )
    assert config.milestones == [10, 20]
    assert config.gamma == 0.5
    assert config.warmup_epochs == 5.0
    assert config.warmup_start_lr == 0.01


def test_alias_averaging_freq():
    assert parse_config(["--averaging_freq", "8"]).local_steps == 8


def test_alias_plsgd_with_pre_post_epochs_is_post_local_sgd():
    config = parse_config(["--training-type", "PLSGD", "--pre_post_epochs", "5"])
    assert config.training_type == "PostLocalSGD"
    assert config.switch_epoch == 5


def test_plsgd_with_switch_epoch_in_yaml_is_post_local_sgd(tmp_path):
    config = parse_config(["--config", write_yaml(tmp_path, {"training_type": "PLSGD", "switch_epoch": 5})])
    assert config.training_type == "PostLocalSGD" and config.switch_epoch == 5


def test_plsgd_without_pre_post_epochs_stays_plsgd():
    assert parse_config(["--training-type", "PLSGD"]).training_type == "PLSGD"
    assert parse_config(["--training-type", "PLSGD", "--pre_post_epochs", "0"]).training_type == "PLSGD"


def test_alias_local_sgd_is_plsgd():
    assert parse_config(["--training-type", "LocalSGD"]).training_type == "PLSGD"
    assert parse_config(["--training-type", "LocalSGD", "--pre_post_epochs", "2"]).training_type == "PostLocalSGD"


def test_alias_num_processes_prepass_lars_eta():
    config = parse_config(
        ["--training-type", "LPPSGD", "--num-processes", "3", "--prepassmepochs", "2", "--lars", "--eta", "0.002"]
    )
    assert config.workers_per_node == 3
    assert config.prepass_epochs == 2
    assert config.optimizer == "lars"
    assert config.trust_coefficient == 0.002


def test_alias_dist_backend_url_test_freq_storeresults():
    config = parse_config(
        [
            "--dist-backend",
            "gloo",
            "--dist-url",
            "tcp://x:1",
            "--test-freq",
            "2",
            "--storeresults",
            "--output-dir",
            "out",
        ]
    )
    assert config.backend == "gloo"
    assert config.dist_url == "tcp://x:1"
    assert config.eval_every == 2
    assert config == dataclasses.replace(
        Config(), backend="gloo", dist_url="tcp://x:1", eval_every=2, store_results=True, output_dir="out"
    )


def test_alias_dist_backend_mpi_runs_as_gloo_with_a_warning(capsys):
    assert parse_config(["--dist-backend", "mpi"]).backend == "gloo"
    assert "--dist-backend mpi" in capsys.readouterr().err


def test_alias_dist_backend_choice_checked():
    assert "--dist-backend" in config_error(["--dist-backend", "tcp"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--averaging_freq", "4", "--local-steps", "8"],
        ["--train_processing_bs", "32", "--batch-size", "64"],
        ["--cuda", "--device", "cpu"],
        ["--lars", "--optimizer", "sgd"],
        ["--dist-backend", "gloo", "--backend", "nccl"],
        ["--lrmilestone", "10", "--milestones", "20"],
    ],
)
def test_alias_contradicting_its_own_flag_rejected(argv):
    message = config_error(argv)
    assert argv[0] in message and "contradicts" in message


def test_alias_agreeing_with_its_own_flag_accepted():
    assert parse_config(["--averaging_freq", "8", "--local-steps", "8"]).local_steps == 8
    assert parse_config(["--cuda", "--device", "cuda"]).device == "cuda"


# ----------------------------------------------------------------------------- DiLoCo defaults


def test_diloco_defaults_to_adamw_and_small_lr():
    config = parse_config(["--training-type", "DiLoCo"])
    assert config.optimizer == "adamw" and config.lr == 1e-3


def test_diloco_keeps_a_given_lr_or_optimizer(tmp_path):
    config = parse_config(["--training-type", "DiLoCo", "--lr", "0.01"])
    assert config.optimizer == "adamw" and config.lr == 0.01
    config = parse_config(["--training-type", "DiLoCo", "--optimizer", "sgd"])
    assert config.optimizer == "sgd" and config.lr == 0.05
    config = parse_config(["--training-type", "DiLoCo", "--lars"])
    assert config.optimizer == "lars"
    path = write_yaml(tmp_path, {"training_type": "DiLoCo", "optimizer": "lamb", "lr": 0.3})
    config = parse_config(["--config", path])
    assert config.optimizer == "lamb" and config.lr == 0.3


def test_other_types_keep_sgd():
    config = parse_config(["--training-type", "SlowMo"])
    assert config.optimizer == "sgd" and config.lr == 0.05


# ----------------------------------------------------------------------------- every LPP-SGD flag accepted


def test_every_no_effect_flag_is_accepted_and_named_once_in_one_warning_line(capsys):
    argv = []
    for flag, nargs in config_aliases.IGNORED_FLAGS.items():
        argv += [flag] if nargs == 0 else [flag, "1"] if nargs == 1 else [flag, "1", "2"]
    config = parse_config([*argv, "--training-type", "MBSGD", "--num-processes", "4", "--pre_post_epochs", "3"])
    assert config == dataclasses.replace(Config(), timestamped_output_dir=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ignored LPP-SGD flags: ")
    named = re.findall(r"--[\w-]+", lines[0])
    assert sorted(named) == sorted([*config_aliases.IGNORED_FLAGS, "--num-processes", "--pre_post_epochs"])


def test_no_warning_without_ignored_flags_and_none_on_other_ranks(capsys, monkeypatch):
    parse_config(["--train_processing_bs", "32"])
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("PMI_RANK", "1")
    parse_config(["--pm"])
    assert capsys.readouterr().err == ""
    assert config_aliases.is_first_rank_by_environment({"RANK": "0", "SLURM_PROCID": "0"})
    assert not config_aliases.is_first_rank_by_environment({"OMPI_COMM_WORLD_RANK": "3"})


def test_bare_resume_is_resume_auto():
    assert parse_config(["--resume"]).resume == "auto"
    assert parse_config(["--resume", "--epochs", "3"]).resume == "auto"
    assert parse_config(["--resume", "run/checkpoints/epoch-00002.pt"]).resume == "run/checkpoints/epoch-00002.pt"
    assert parse_config([]).resume == ""


@pytest.mark.parametrize("training_type", ["LAPSGD", "LPPSGD"])
def test_pre_post_epochs_and_num_processes_for_hogwild_types(training_type):
    config = parse_config(["--training-type", training_type, "--pre_post_epochs", "5", "--num-processes", "3"])
    assert config.training_type == training_type and config.switch_epoch == 5 and config.workers_per_node == 3


@pytest.mark.parametrize("training_type", ["MBSGD", "PLSGD", "SlowMo"])
def test_num_processes_is_ignored_outside_hogwild_types(training_type, capsys):
    assert parse_config(["--training-type", training_type, "--num-processes", "4"]).workers_per_node == 1
    assert "--num-processes" in capsys.readouterr().err


def test_lppsgd_flags_without_output_dir_give_a_timestamped_folder(tmp_path):
    assert parse_config(["--storeresults"]).timestamped_output_dir
    assert not parse_config(["--storeresults", "--output-dir", "x"]).timestamped_output_dir
    assert not parse_config(["--storeresults", "--no-timestamped-output-dir"]).timestamped_output_dir
    assert not parse_config(["--config", write_yaml(tmp_path, {"output_dir": "y"}), "--pm"]).timestamped_output_dir
    assert not parse_config(["--batch-size", "32"]).timestamped_output_dir


@pytest.mark.parametrize(
    "alias, dataset, ours",
    [
        ("res32", "cifar10", "resnet32"),
        ("wnet168", "cifar10", "wrn16_8"),
        ("wnet28", "cifar100", "wrn28_10"),
        ("res50", "imagenet", "tv_resnet50"),
        ("res34", "imagenet", "tv_resnet34"),
        ("small", "mnist", "small"),
        ("res18", "imagenet", "tv_resnet18"),
        ("res18", "cifar10", "resnet18"),
        ("res18", None, "resnet18"),
        ("res20", "cifar10", "resnet20"),
    ],
)
def test_lppsgd_model_names_on_the_alias_layer(alias, dataset, ours):
    # LPP-SGD's res18 is torchvision's ResNet-18; ours keeps the CIFAR stem unless the data is ImageNet.
    settings = {"model": alias, **({"dataset": dataset} if dataset else {})}
    assert config_aliases.normalise_names(settings)["model"] == ours


def test_imagenet_dir_maps_to_our_setting_or_is_named_as_ignored(capsys):
    config = parse_config(["--imagenet-dir", "/data/ILSVRC"])
    if "imagenet_dir" in FIELDS:
        assert config.imagenet_dir == "/data/ILSVRC"
    else:
        assert "--imagenet-dir" in capsys.readouterr().err


def test_cuda_without_a_gpu_says_to_remove_cuda(capsys, monkeypatch):
    import main

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main.main(["--cuda", "--dataset", "synthetic", "--output-dir", "never-written"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "remove --cuda" in error
