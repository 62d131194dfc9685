"""The CUDA path (marked ``gpu``; skipped where no CUDA device is visible): bench/gpu_check.sh runs these.

Model and data on the device, a one-rank NCCL process group, DDP on CUDA, every training type
for a few steps through main.py --device cuda, mixed precision, and checkpoints that move
between the GPU and the CPU.
"""

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dataloaders import build_data
from models import build_model
from tests.harness import check_ok, metrics, run_main, summary
from train.sync import SYNC_TYPES
from train.sync.mbsgd import MBSGD
from utilities.checkpoint import load_checkpoint
from utilities.distributed import CommMeter, all_reduce_mean, pick_backend, pick_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")]

SHORT = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "2000",
    "--model",
    "resnet20",
    "--batch-size",
    "64",
    "--log-every",
    "1000",
    "--device",
    "cuda",
]
TYPE_FLAGS = {
    "PostLocalSGD": ["--switch-step", "3"],
    "LAPSGD": ["--workers-per-node", "2"],
    "LPPSGD": ["--workers-per-node", "2"],
}


def tiny_data(device):
    return build_data("synthetic", synthetic_size=2000, batch_size=32, eval_batch_size=64, device=torch.device(device))


def test_data_stays_on_the_gpu_and_batches_match_the_cpu_ones():
    device = pick_device("auto", 0)
    assert device.type == "cuda" and pick_backend("auto", device) == "nccl"
    gpu, cpu = tiny_data(device), tiny_data("cpu")
    for tensor in (gpu.train.images, gpu.train.labels, gpu.val.images, gpu.test.images, gpu.train.normalizer.mean):
        assert tensor.is_cuda
    gpu_inputs, gpu_targets = next(gpu.train.epoch(1))
    cpu_inputs, cpu_targets = next(cpu.train.epoch(1))
    assert gpu_inputs.is_cuda and gpu_targets.is_cuda
    # Shards, crops and flips are drawn on the host: the same batch on either device.
    assert torch.equal(gpu_targets.cpu(), cpu_targets)
    assert torch.allclose(gpu_inputs.cpu(), cpu_inputs, atol=1e-6)
    model = build_model("resnet20", 3, 32, 10).to(device)
    logits = model(gpu_inputs)
    assert logits.is_cuda and logits.shape == (32, 10) and torch.isfinite(logits).all()


def _one_nccl_rank(rank, init_file, results):
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=1)
    try:
        meter = CommMeter()
        values = torch.tensor([1.0, 2.0, 3.0], device="cuda")
        all_reduce_mean(values, meter)
        results["all_reduce"] = values.cpu().tolist()
        torch.manual_seed(0)
        model = build_model("lenet5", 3, 32, 10).cuda()
        reference = build_model("lenet5", 3, 32, 10).cuda()
        reference.load_state_dict(model.state_dict())
        sync = MBSGD(meter)
        ddp = sync.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        inputs, targets = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
        torch.nn.functional.cross_entropy(ddp(inputs), targets).backward()
        torch.nn.functional.cross_entropy(reference(inputs), targets).backward()
        results["ddp_type"] = type(ddp).__name__
        results["grad_gap"] = max(
            (a.grad - b.grad).abs().max().item() for a, b in zip(model.parameters(), reference.parameters())
        )
        results["bytes"] = meter.bytes - 3 * 4
        results["param_bytes"] = sum(p.numel() * 4 for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_one_rank_nccl_group_all_reduces_and_ddp_trains_on_cuda():
    with tempfile.TemporaryDirectory() as folder:
        manager = mp.Manager()
        results = manager.dict()
        mp.spawn(_one_nccl_rank, args=(os.path.join(folder, "rendezvous"), results), nprocs=1, join=True)
        results = dict(results)
    assert results["all_reduce"] == [1.0, 2.0, 3.0]
    assert results["ddp_type"] == "DistributedDataParallel"
    assert results["grad_gap"] < 1e-5  # DDP over one rank: the mean gradient is the rank's own
    assert results["bytes"] == results["param_bytes"]  # every gradient bucket went through the counted hook


@pytest.mark.parametrize("training_type", list(SYNC_TYPES))
def test_every_training_type_trains_a_few_steps_on_cuda(tmp_path, training_type):
    check_ok(
        run_main(
            [
                *SHORT,
                "--training-type",
                training_type,
                "--max-steps",
                "6",
                "--local-steps",
                "2",
                *TYPE_FLAGS.get(training_type, []),
                "--output-dir",
                str(tmp_path),
            ]
        )
    )
    result = summary(tmp_path)
    assert result["steps"] >= 6 and 0 <= result["final_test_accuracy"] <= 1
    assert math.isfinite(result["final_test_loss"])
    assert "device: cuda:0" in (tmp_path / "config.yaml").read_text()
    assert all(
        tensor.is_cuda
        for tensor in load_checkpoint(str(tmp_path / "checkpoints" / "epoch-00001.pt"), "cuda")["model"].values()
    )


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_tracks_fp32(tmp_path, amp):
    learn = [*SHORT, "--synthetic-size", "4000", "--epochs", "3"]  # 168 steps: ResNet-20 is well past chance
    check_ok(run_main([*learn, "--output-dir", str(tmp_path / "fp32")]))
    check_ok(run_main([*learn, "--amp", amp, "--output-dir", str(tmp_path / amp)]))
    fp32_loss, amp_loss = metrics(tmp_path / "fp32")[-1]["train_loss"], metrics(tmp_path / amp)[-1]["train_loss"]
    assert amp_loss < 0.6 * math.log(10)  # chance is ln 10
    assert abs(amp_loss - fp32_loss) < 0.15 * fp32_loss + 0.05


def test_checkpoint_moves_from_gpu_to_cpu_and_back(tmp_path):
    run = [
        *SHORT,
        "--training-type",
        "PLSGD",
        "--local-steps",
        "4",
        "--epochs",
        "3",
        "--epochs-per-job",
        "1",
        "--output-dir",
        str(tmp_path),
    ]
    check_ok(run_main(run))
    saved = str(tmp_path / "checkpoints" / "epoch-00001.pt")
    on_cpu, on_gpu = load_checkpoint(saved, "cpu"), load_checkpoint(saved, "cuda")
    for name, tensor in on_cpu["model"].items():
        assert tensor.device.type == "cpu" and torch.equal(tensor, on_gpu["model"][name].cpu()), name
    check_ok(run_main([*run, "--device", "cpu", "--resume", "auto"]))  # the last --device wins
    assert "device: cpu" in (tmp_path / "config.yaml").read_text()
    check_ok(run_main([*run, "--device", "cuda", "--resume", "auto"]))
    assert "device: cuda:0" in (tmp_path / "config.yaml").read_text()
    rows = metrics(tmp_path)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [row["step"] for row in rows] == [rows[0]["step"] * k for k in (1, 2, 3)]
    assert rows[-1]["train_loss"] < math.log(10) and summary(tmp_path)["epochs"] == 3
