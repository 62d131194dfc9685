"""main.py as users run it: torchrun with 2 Gloo ranks, one process, and bad input."""

import pytest

from tests.harness import (
    LEARN_ARGS,
    SHARED_DATA,
    TINY,
    check_ok,
    final_model,
    max_difference,
    metrics,
    run_main,
    summary,
)

LEARN = LEARN_ARGS
METRIC_FIELDS = {
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_accuracy",
    "images_per_second",
    "comm_rounds",
    "comm_bytes",
    "comm_seconds",
    "wall_seconds",
}
SUMMARY_FIELDS = {
    "final_test_accuracy",
    "best_val_accuracy",
    "steps",
    "comm_rounds",
    "comm_bytes",
    "wall_seconds",
    "images_per_second",
    "world_size",
    "training_type",
    "comm_reduction",
}
# Float32 rounding differences between the two grow chaotically over many steps; 12 steps keep them ~1e-7.
PLAIN_SGD = ["--momentum", "0", "--weight-decay", "0", "--no-augment", "--lr-schedule", "constant", "--max-steps", "12"]


def test_torchrun_two_ranks_mbsgd_writes_every_output_and_learns(tmp_path):
    check_ok(run_main([*LEARN, "--training-type", "MBSGD", "--output-dir", str(tmp_path)], nproc=2))
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model.pt"):
        assert (tmp_path / name).exists(), name
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*.pt")) == [
        "epoch-00001.pt",
        "epoch-00001.rank-1.pt",
        "epoch-00002.pt",
        "epoch-00002.rank-1.pt",
    ]
    rows = metrics(tmp_path)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert METRIC_FIELDS <= set(rows[0])
    result = summary(tmp_path)
    assert SUMMARY_FIELDS <= set(result)
    assert result["world_size"] == 2 and result["replicas_identical"]
    assert result["final_test_accuracy"] > 0.6  # 10 classes: chance is 0.1
    assert 0 <= result["final_test_accuracy"] <= 1
    assert result["comm_rounds"] == result["steps"]


def test_single_process_run(tmp_path):
    check_ok(run_main([*LEARN, "--output-dir", str(tmp_path)]))
    result = summary(tmp_path)
    assert result["world_size"] == 1 and result["comm_rounds"] == 0
    assert result["final_test_accuracy"] > 0.6


@pytest.fixture(scope="module")
def mbsgd_plain(tmp_path_factory):
    output = tmp_path_factory.mktemp("mbsgd_plain")
    check_ok(run_main([*TINY, *PLAIN_SGD, "--training-type", "MBSGD", "--output-dir", str(output)], nproc=2))
    return output


def test_local_sgd_with_one_local_step_equals_synchronous_sgd(tmp_path, mbsgd_plain):
    check_ok(
        run_main(
            [*TINY, *PLAIN_SGD, "--training-type", "PLSGD", "--local-steps", "1", "--output-dir", str(tmp_path)],
            nproc=2,
        )
    )
    assert max_difference(final_model(tmp_path), final_model(mbsgd_plain)) < 1e-5


def test_post_local_sgd_before_its_switch_equals_mbsgd(tmp_path, mbsgd_plain):
    check_ok(
        run_main(
            [
                *TINY,
                *PLAIN_SGD,
                "--training-type",
                "PostLocalSGD",
                "--switch-step",
                "100000",
                "--output-dir",
                str(tmp_path),
            ],
            nproc=2,
        )
    )
    assert max_difference(final_model(tmp_path), final_model(mbsgd_plain)) < 1e-5


def test_gradient_accumulation_under_ddp_equals_one_big_batch_without_extra_all_reduces(tmp_path, mbsgd_plain):
    check_ok(
        run_main(
            [*TINY, *PLAIN_SGD, "--training-type", "MBSGD", "--accumulation-steps", "4", "--output-dir", str(tmp_path)],
            nproc=2,
        )
    )
    assert max_difference(final_model(tmp_path), final_model(mbsgd_plain)) < 1e-5
    # no_sync(): the three non-final micro-batches all-reduce nothing.
    assert summary(tmp_path)["comm_collectives"] == summary(mbsgd_plain)["comm_collectives"]
    assert summary(tmp_path)["comm_bytes"] == summary(mbsgd_plain)["comm_bytes"]


@pytest.mark.parametrize(
    "training_type,extra",
    [
        ("PLSGD", ["--local-steps", "4"]),
        ("PostLocalSGD", ["--local-steps", "4", "--switch-epoch", "1"]),
        ("SlowMo", ["--local-steps", "4", "--slow-momentum", "0.5"]),
        ("DiLoCo", ["--local-steps", "4"]),
        ("AdaptiveJ", ["--local-steps", "4", "--min-local-steps", "2", "--max-local-steps", "16"]),
        ("TorchPeriodicAverager", ["--local-steps", "4"]),
    ],
)
def test_every_local_method_learns_and_counts_its_rounds(tmp_path, training_type, extra):
    check_ok(run_main([*LEARN, "--training-type", training_type, *extra, "--output-dir", str(tmp_path)], nproc=2))
    result = summary(tmp_path)
    assert result["training_type"] == training_type and result["replicas_identical"]
    assert result["final_test_accuracy"] > 0.5
    assert 0 < result["comm_rounds"] < result["steps"] and result["comm_reduction"] > 0
    if training_type in ("PLSGD", "SlowMo", "DiLoCo"):
        assert result["comm_rounds"] == result["steps"] // 4
    if training_type == "TorchPeriodicAverager":  # torch averages at its steps 0, 4, 8, ...
        assert result["comm_rounds"] in (result["steps"] // 4, result["steps"] // 4 + 1)
    if training_type == "AdaptiveJ":
        assert all("local_steps" in row for row in metrics(tmp_path))


def test_a_folder_holding_a_run_is_refused_and_resume_continues_it(tmp_path):
    args = [*TINY, "--output-dir", str(tmp_path)]
    check_ok(run_main(args))
    before = (tmp_path / "metrics.jsonl").read_bytes()
    refused = run_main(args)
    assert refused.returncode == 2 and "holds another run" in refused.stderr
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    check_ok(run_main([*args, "--epochs", "2", "--resume", "auto"]))
    assert [row["epoch"] for row in metrics(tmp_path)] == [1, 2]
    assert summary(tmp_path)["epochs"] == 2


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").exists(), reason="real MNIST not in ../shared/data")
def test_real_mnist_two_ranks(tmp_path):
    check_ok(
        run_main(
            [
                "--dataset",
                "mnist",
                "--data-dir",
                str(SHARED_DATA),
                "--no-download",
                "--model",
                "lenet5",
                "--max-steps",
                "150",
                "--batch-size",
                "64",
                "--output-dir",
                str(tmp_path),
            ],
            nproc=2,
        )
    )
    assert summary(tmp_path)["final_test_accuracy"] > 0.85


def test_ghost_batch_norm_and_large_batch_optimizers_run_through_main(tmp_path):
    # BatchNorm model with virtual batches of 8, LAMB under DDP, LARS as the inner optimizer of local SGD.
    check_ok(
        run_main(
            [
                *TINY,
                "--model",
                "resnet20",
                "--ghost-batch-size",
                "8",
                "--max-steps",
                "3",
                "--output-dir",
                str(tmp_path / "ghost"),
            ]
        )
    )
    check_ok(
        run_main(
            [*TINY, "--optimizer", "lamb", "--lr", "0.01", "--max-steps", "4", "--output-dir", str(tmp_path / "lamb")],
            nproc=2,
        )
    )
    check_ok(
        run_main(
            [
                *TINY,
                "--training-type",
                "PLSGD",
                "--local-steps",
                "2",
                "--optimizer",
                "lars",
                "--lr",
                "1.0",
                "--max-steps",
                "4",
                "--output-dir",
                str(tmp_path / "lars"),
            ],
            nproc=2,
        )
    )
    assert summary(tmp_path / "lamb")["replicas_identical"] and summary(tmp_path / "lars")["replicas_identical"]
    assert summary(tmp_path / "lars")["comm_rounds"] == 2
