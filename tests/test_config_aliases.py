"""LPP-SGD's flags mapped onto this trainer's settings, and DiLoCo's defaults."""

import dataclasses

import pytest

from tests.test_config import config_error, write_yaml
from utilities.config import Config, ConfigError, parse_config


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


@pytest.mark.parametrize("alias, ours", [("res20", "resnet20"), ("res18", "resnet18"), ("resnet", "resnet20"),
                                         ("lenet", "lenet5"), ("vgg", "vgg11")])
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
    config = parse_config(["--lrmilestone", "10", "20", "--gamma", "0.5", "--warm_up_epochs", "5",
                           "--baseline_lr", "0.01"])
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
    config = parse_config(["--training-type", "LPPSGD", "--num-processes", "3", "--prepassmepochs", "2", "--lars",
                           "--eta", "0.002"])
    assert config.workers_per_node == 3
    assert config.prepass_epochs == 2
    assert config.optimizer == "lars"
    assert config.trust_coefficient == 0.002


def test_alias_dist_backend_url_test_freq_storeresults():
    config = parse_config(["--dist-backend", "gloo", "--dist-url", "tcp://x:1", "--test-freq", "2",
                           "--storeresults", "--output-dir", "out"])
    assert config.backend == "gloo"
    assert config.dist_url == "tcp://x:1"
    assert config.eval_every == 2
    assert config == dataclasses.replace(Config(), backend="gloo", dist_url="tcp://x:1", eval_every=2,
                                         store_results=True, output_dir="out")


def test_alias_dist_backend_mpi_runs_as_gloo_with_a_warning(capsys):
    assert parse_config(["--dist-backend", "mpi"]).backend == "gloo"
    assert "--dist-backend mpi" in capsys.readouterr().err


def test_alias_dist_backend_choice_checked():
    assert "--dist-backend" in config_error(["--dist-backend", "tcp"])


@pytest.mark.parametrize("argv", [
    ["--averaging_freq", "4", "--local-steps", "8"],
    ["--train_processing_bs", "32", "--batch-size", "64"],
    ["--cuda", "--device", "cpu"],
    ["--lars", "--optimizer", "sgd"],
    ["--dist-backend", "gloo", "--backend", "nccl"],
    ["--lrmilestone", "10", "--milestones", "20"],
])
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
