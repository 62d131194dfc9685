"""LPP-SGD's own sample-script lines (bapichatterjee/LPP-SGD, samplescripts/) run through this main.py.

The lines are kept verbatim as data, shell variables included. The config-level tests parse every
line; the end-to-end tests run one line per training type with only the launcher (mpirun/srun ->
our mpiexec or torchrun, 2 ranks), the data (synthetic, or the shared MNIST), the size (batches,
workers, large models) and the length (epochs, steps) replaced.
"""

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.harness import REPO, SHARED_DATA, check_ok, child_env, find_mpiexec, free_port, metrics, summary
from utilities import config_aliases, lppsgd_results
from utilities.config import DATASETS, MODELS, build_parser, parse_config

COMMON_CIFAR = (
    "--data-dir $DATADIR --dataset cifar10 --num-classes 10 --momentum 0.9 --model res20 --cuda "
    "--weight-decay 0.0005 --nesterov --test-freq 1 --partition --bs_multiple 1 --test_bs_multiple 1 "
)
COMMON_WNET = (
    "--data-dir $DATADIR --dataset cifar10 --num-classes 10 --momentum 0.9 --model wnet168 --cuda "
    "--weight-decay 0.0001 --seed 6 --pm --nesterov --test-freq 1 --partition --bs_multiple 1 "
    "--test_bs_multiple 1 --epochs 200 --warm_up_epochs 5 --dist-url tcp://$HOST:23456 --storeresults "
)
COMMON_IMAGENET = (
    "--data-dir $DATADIR --imagenet-dir $IMAGENETDIR --dataset imagenet --num-classes 1000 "
    "--momentum 0.9 --model res50 --cuda --weight-decay 0.00005 --pm --nesterov --workers 8 "
    "--num-threads 8 --test-freq 1 --partition --bs_multiple 1 --test_bs_multiple 1 --epochs 90 "
)
_HOGWILD_CIFAR = (
    "--baseline_lr 0.1 --seed 6 --pm --workers 0 --num-threads 2 --num-processes 4 --pre_post_epochs 150 "
    "--scheduler-type cosine --epochs 300 --averaging_freq 16 --warm_up_epochs 5 "
    "--dist-url tcp://localhost:23456 --storeresults "
)
_SYNC_CIFAR = (
    "--baseline_lr 0.1 --seed 0 --pm --averaging_freq 8 --workers 4 --num-threads 4 --scheduler-type mstep "
    "--epochs 300 --warm_up_epochs 5 --dist-url tcp://localhost:23456 --lrmilestone 150 225 --storeresults "
)
# Each line of LPP-SGD's samplescripts (active and commented-out), the arguments after $PROGRAM.
SCRIPT_LINES = {
    "singlenoderun LAPSGD": COMMON_CIFAR
    + "--train_processing_bs 128 --test_processing_bs 128 --lr 0.2 "
    + _HOGWILD_CIFAR
    + "--training-type LAPSGD",
    "singlenoderun LAPSGD bs256": COMMON_CIFAR
    + "--train_processing_bs 256 --test_processing_bs 256 --lr 0.4 "
    + _HOGWILD_CIFAR
    + "--training-type LAPSGD",
    "singlenoderun LPPSGD": COMMON_CIFAR
    + "--train_processing_bs 128 --test_processing_bs 128 --lr 0.125 "
    + _HOGWILD_CIFAR
    + "--training-type LPPSGD --prepassmepochs 30",
    "singlenoderun LPPSGD bs256": COMMON_CIFAR
    + "--train_processing_bs 256 --test_processing_bs 256 --lr 0.5 "
    + _HOGWILD_CIFAR
    + "--training-type LPPSGD --prepassmepochs 30",
    "singlenoderun PLSGD bs1024": COMMON_CIFAR
    + "--train_processing_bs 1024 --test_processing_bs 1024 --lr 0.8 "
    + _SYNC_CIFAR
    + "--training-type PLSGD --pre_post_epochs 150",
    "singlenoderun PLSGD bs128": COMMON_CIFAR
    + "--train_processing_bs 128 --test_processing_bs 128 --lr 0.1 "
    + _SYNC_CIFAR
    + "--training-type PLSGD --pre_post_epochs 150",
    "singlenoderun MBSGD LARS": COMMON_CIFAR
    + "--train_processing_bs 1024 --test_processing_bs 1024 --lr 0.8 "
    + _SYNC_CIFAR
    + "--training-type MBSGD --lars",
    "singlenoderun PLSGD LARS": COMMON_CIFAR
    + "--train_processing_bs 1024 --test_processing_bs 1024 --lr 0.8 "
    + _SYNC_CIFAR
    + "--training-type PLSGD --pre_post_epochs 150 --lars",
    "multinoderun LAPSGD": COMMON_WNET + "--train_processing_bs 64 --test_processing_bs 64 --lr $LRHWB "
    "--baseline_lr 0.05 --workers 0 --num-threads 4 --num-processes 4 --pre_post_epochs 100 "
    "--scheduler-type cosine --training-type LAPSGD --averaging_freq 16",
    "multinoderun LPPSGD": COMMON_WNET + "--train_processing_bs 64 --test_processing_bs 64 --lr $LRPHWB "
    "--baseline_lr 0.05 --workers 0 --num-threads 4 --num-processes 3 --pre_post_epochs 100 "
    "--scheduler-type cosine --training-type LPPSGD --prepassmepochs 20 --averaging_freq 16",
    "multinoderun PLSGD": COMMON_WNET + "--train_processing_bs 128 --test_processing_bs 128 --lr $LRMBSGDB "
    "--baseline_lr 0.1 --workers 4 --num-threads 4 --num-processes 4 --pre_post_epochs 100 "
    "--scheduler-type mstep --training-type PLSGD --lrmilestone 60 120 160 --averaging_freq 16",
    "multinoderun MBSGD": COMMON_WNET + "--train_processing_bs 128 --test_processing_bs 128 --lr $LRMBSGDB "
    "--baseline_lr 0.1 --workers 4 --num-threads 4 --pre_post_epochs 100 --scheduler-type mstep "
    "--gamma 0.2 --training-type MBSGD --lrmilestone 60 120 160",
    "slurmrun LPPSGD": COMMON_IMAGENET + "--train_processing_bs 32 --test_processing_bs 32 --lr 0.125 "
    "--baseline_lr 0.0125 --seed 42 --num-processes 4 --pre_post_epochs 45 --scheduler-type cosine "
    "--training-type LPPSGD --prepassmepochs 6 --averaging_freq 8 --warm_up_epochs 5 "
    "--dist-url tcp://$MASTER:23456 --numnodes $SLURM_JOB_NUM_NODES --storeresults",
    "slurmrun LAPSGD": COMMON_IMAGENET + "--train_processing_bs 32 --test_processing_bs 32 --lr 0.1 "
    "--baseline_lr 0.0125 --seed 42 --num-processes 4 --pre_post_epochs 45 --scheduler-type cosine "
    "--training-type LAPSGD --averaging_freq 8 --warm_up_epochs 5 "
    "--dist-url tcp://$MASTER:23456 --numnodes $SLURM_JOB_NUM_NODES --storeresults",
    "slurmrun MBSGD": COMMON_IMAGENET + "--train_processing_bs 128 --test_processing_bs 128 --lr 0.4 "
    "--baseline_lr 0.0125 --seed 0 --scheduler-type mstep --lrmilestone 30 60 80 --pre_post_epochs 45 "
    "--training-type MBSGD --numnodes $SLURM_JOB_NUM_NODES --warm_up_epochs 5 "
    "--dist-url tcp://$HOSTNAME:23456 --storeresults",
    "slurmrun PLSGD": COMMON_IMAGENET + "--train_processing_bs 128 --test_processing_bs 128 --lr 0.4 "
    "--baseline_lr 0.0125 --seed 0 --scheduler-type mstep --lrmilestone 30 60 80 --pre_post_epochs 45 "
    "--averaging_freq 8 --numnodes $SLURM_JOB_NUM_NODES --training-type PLSGD --pre_post_epochs 45 "
    "--warm_up_epochs 5 --dist-url tcp://$MASTER:21456 --storeresults",
    "slurmrunexample MBSGD": "--data-dir $DATADIR --dataset mnist --num-classes 10 --momentum 0.9 --model small --cuda "
    "--train_processing_bs 128 --test_processing_bs 128 --lr 0.4 --baseline_lr 0.1 "
    "--weight-decay 0.0005 --seed 0 --pm --nesterov --workers 8 --num-threads 8 --test-freq 1 "
    "--partition --scheduler-type mstep --lrmilestone 30 60 80 --training-type MBSGD "
    "--numnodes $SLURM_JOB_NUM_NODES --bs_multiple 1 --test_bs_multiple 1 --epochs 90 "
    "--warm_up_epochs 5 --dist-url tcp://$HOSTNAME:23456 --storeresults",
}
# The values the scripts give their variables (multinoderun.sh sets the LRs; hosts are this machine).
SCRIPT_VARIABLES = {
    "DATADIR": "data",
    "IMAGENETDIR": "imagenet",
    "LRHWB": "0.4",
    "LRPHWB": "0.5",
    "LRMBSGDB": "0.8",
    "HOST": "localhost",
    "MASTER": "localhost",
    "HOSTNAME": "localhost",
    "SLURM_JOB_NUM_NODES": "2",
}
OURS = {"res20": "resnet20", "wnet168": "wrn16_8", "res50": "tv_resnet50", "small": "small"}


def script_argv(name: str) -> list:
    return shlex.split(re.sub(r"\$(\w+)", lambda match: SCRIPT_VARIABLES[match.group(1)], SCRIPT_LINES[name]))


def alias_settings(argv: list) -> dict:
    """The alias layer alone (parser -> translate -> names), independent of which models are registered."""
    given = vars(build_parser().parse_args(argv))
    return config_aliases.normalise_names(config_aliases.translate(given))


@pytest.mark.parametrize("name", sorted(SCRIPT_LINES))
def test_every_script_line_is_accepted_and_mapped(name, capsys):
    argv = script_argv(name)
    settings = alias_settings(argv)
    given_type = argv[argv.index("--training-type") + 1]
    assert settings["model"] == OURS[argv[argv.index("--model") + 1]]
    assert settings["store_results"] and settings["timestamped_output_dir"] and settings["device"] == "cuda"
    hogwild, local = given_type in ("LAPSGD", "LPPSGD"), given_type == "PLSGD"
    pre_post = argv[argv.index("--pre_post_epochs") + 1] if "--pre_post_epochs" in argv else None
    assert settings.get("switch_epoch") == (int(pre_post) if pre_post and (hogwild or local) else None)
    workers = argv[argv.index("--num-processes") + 1] if "--num-processes" in argv else None
    assert settings.get("workers_per_node") == (int(workers) if workers and hogwild else None)
    schedule = argv[argv.index("--scheduler-type") + 1]
    assert settings["lr_schedule"] == ("cosine" if schedule == "cosine" else "multistep")
    if schedule != "cosine":
        assert settings["milestones"] == argv[argv.index("--lrmilestone") + 1 :][: len(settings["milestones"])]
    if settings["model"] in MODELS and settings["dataset"] in DATASETS:
        config = parse_config(argv)
        assert config.training_type == ("PostLocalSGD" if local else given_type)
        warning = [line for line in capsys.readouterr().err.splitlines() if "LPP-SGD" in line]
        assert len(warning) == 1 and warning[0].startswith("warning: ignored LPP-SGD flags: ")
        named = re.findall(r"--[\w-]+", warning[0])
        assert "--pm" in named and "--partition" in named and len(named) == len(set(named))
        assert ("--num-processes" in named) == bool(workers and not hogwild)
        assert ("--pre_post_epochs" in named) == bool(pre_post and not (hogwild or local))


# ----------------------------------------------------------------------------- end to end


def adapted(name: str, data: list) -> list:
    """The line with only launcher-independent size and length replaced: no GPU flag on a CPU machine,
    the given data, small batches, 2 workers, 2 epochs (the first one before --pre_post_epochs ends)."""
    replace = {
        "--train_processing_bs": "16",
        "--test_processing_bs": "256",
        "--num-processes": "2",
        "--epochs": "2",
        "--pre_post_epochs": "1",
        "--prepassmepochs": "1",
        "--warm_up_epochs": "1",
        "--averaging_freq": "4",
    }
    too_big = {"wnet168": "res20", "wnet28": "res20"}  # CIFAR networks of 11-36 M parameters: too slow on 2 cores
    argv, index = [], 0
    words = script_argv(name)
    while index < len(words):
        word = words[index]
        if word in ("--dataset", "--data-dir", "--imagenet-dir", "--lrmilestone", "--dist-url"):
            index += 2
            while word == "--lrmilestone" and index < len(words) and not words[index].startswith("--"):
                index += 1
            argv += {
                "--lrmilestone": ["--lrmilestone", "1"],
                "--dist-url": ["--dist-url", f"tcp://127.0.0.1:{free_port()}"],
            }.get(word, [])
            continue
        if word == "--cuda" and not torch.cuda.is_available():
            index += 1
            continue
        argv.append(word)
        if word in replace:
            argv.append(replace[word])
            index += 1
        elif word == "--model":
            argv.append(too_big.get(words[index + 1], words[index + 1]))
            index += 1
        index += 1
    return argv + data + ["--log-every", "1000"]


SYNTHETIC = ["--dataset", "synthetic", "--synthetic-size", "400"]


def launch(argv: list, cwd: Path, mpi: bool):
    mpiexec = find_mpiexec()
    if mpi and mpiexec:
        command = [mpiexec, "-n", "2", sys.executable, str(REPO / "main.py"), *argv]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            str(REPO / "main.py"),
            *argv,
        ]
    env = dict(child_env(), MASTER_PORT=str(free_port()))
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def the_run_folder(cwd: Path) -> Path:
    folders = [path for path in (cwd / "runs").iterdir() if (path / "summary.json").exists()]
    assert len(folders) == 1, folders
    return folders[0]


def check_lppsgd_results(folder: Path) -> None:
    rows = metrics(folder)
    results = json.loads((folder / "results.json").read_text())
    assert list(results) == [str(index) for index in range(len(results))]
    by_tag = {}
    for entry in results.values():
        assert set(entry) == {"tag", "ep", "val", "time"}
        by_tag.setdefault(entry["tag"], []).append(entry)
    assert set(by_tag) == {"LR", "TrainLoss", "TrainAcc@1", "TestLoss", "TestAcc@1"}
    assert [entry["val"] for entry in by_tag["TestAcc@1"]] == pytest.approx([100 * r["test_accuracy"] for r in rows])
    assert [entry["ep"] for entry in by_tag["TrainLoss"]] == [row["epoch"] for row in rows]
    arguments = json.loads((folder / "args.json").read_text())
    assert arguments["storeresults"] and arguments["train_processing_bs"] == 16


MNIST = ["--dataset", "mnist", "--data-dir", str(SHARED_DATA), "--no-download", "--max-steps", "20"]


def skip_unless_available(name: str, data: list) -> None:
    settings = alias_settings(adapted(name, data))
    if settings["dataset"] == "mnist" and not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST not in ../shared/data")
    if settings["model"] not in MODELS:
        pytest.skip(
            f"model {settings['model']} (LPP-SGD's {OURS.get(settings['model'], settings['model'])}) "
            f"is not registered on this branch"
        )


@pytest.mark.parametrize(
    "name, mpi, data",
    [
        ("singlenoderun LAPSGD", True, SYNTHETIC),
        ("multinoderun PLSGD", False, SYNTHETIC),
        ("slurmrunexample MBSGD", False, MNIST),
    ],
)
def test_script_line_runs_end_to_end(name, mpi, data, tmp_path):
    skip_unless_available(name, data)
    result = launch(adapted(name, data), tmp_path, mpi)
    check_ok(result)
    assert result.stderr.count("warning: ignored LPP-SGD flags") == 1
    folder = the_run_folder(tmp_path)
    assert summary(folder)["world_size"] == 2 and summary(folder)["replicas_identical"]
    check_lppsgd_results(folder)
    first_epoch = metrics(folder)[0]
    if "LAPSGD" in name:  # --pre_post_epochs 1: the node averaged after every one of its first epoch's steps
        assert first_epoch["comm_rounds"] == first_epoch["step"] > 0
    elif "PLSGD" in name:  # with --pre_post_epochs 1 it is post-local SGD: synchronous first epoch
        assert summary(folder)["training_type"] == "PostLocalSGD"
        assert first_epoch["comm_rounds"] == first_epoch["step"]
    else:  # 20 steps of LPP-SGD's small net (two 0.5 dropouts) at its warmup LR: not yet learning
        assert first_epoch["comm_rounds"] == first_epoch["step"] == 20 and math.isfinite(first_epoch["train_loss"])


def test_imagenet_script_lines_need_the_imagenet_source():
    if "imagenet" not in DATASETS:
        pytest.skip("the imagenet data source is not on this branch; its lines are checked at the config level")
    settings = alias_settings(script_argv("slurmrun LPPSGD"))
    assert settings["model"] == "tv_resnet50" and settings["imagenet_dir"] == "imagenet"


# ----------------------------------------------------------------------------- result files and run folders


def test_each_run_gets_a_new_folder_and_resume_finds_the_newest(tmp_path):
    base = str(tmp_path / "runs" / "LAPSGD-cifar10-resnet20")
    first = lppsgd_results.timestamped_run_dir(base, "", "cpu")
    assert re.fullmatch(re.escape(base) + r"-\d{8}-\d{6}", first)
    Path(first).mkdir(parents=True)
    (Path(first) / "metrics.jsonl").write_text("")
    second = lppsgd_results.timestamped_run_dir(base, "", "cpu")
    assert second != first and not Path(second).exists()  # even within the same second
    Path(second).mkdir()  # a folder without a run in it is not resumed
    assert lppsgd_results.timestamped_run_dir(base, "auto", "cpu") == first


def test_results_entries_follow_lppsgd_tags_and_units():
    rows = [
        {
            "epoch": 1,
            "lr": 0.1,
            "train_loss": 2.0,
            "train_accuracy": 0.25,
            "test_loss": 1.5,
            "test_accuracy": 0.5,
            "wall_seconds": 3.0,
        },
        {
            "epoch": 2,
            "lr": 0.2,
            "train_loss": 1.0,
            "train_accuracy": 0.5,
            "test_loss": None,
            "test_accuracy": None,
            "wall_seconds": 6.0,
        },
    ]
    entries = lppsgd_results.results_entries(rows)
    assert [(e["tag"], e["ep"], e["val"], e["time"]) for e in entries] == [
        ("LR", 1, 0.1, 3.0),
        ("TrainLoss", 1, 2.0, 3.0),
        ("TrainAcc@1", 1, 25.0, 3.0),
        ("TestLoss", 1, 1.5, 3.0),
        ("TestAcc@1", 1, 50.0, 3.0),
        ("LR", 2, 0.2, 6.0),
        ("TrainLoss", 2, 1.0, 6.0),
        ("TrainAcc@1", 2, 50.0, 6.0),
    ]
