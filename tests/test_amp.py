"""--amp on the CPU: autocast and loss scaling as units, and bf16 training whose loss tracks fp32's.

The accuracy check documented in README (--amp): a short bf16 run ends within a few percent
of the fp32 run's training loss, both well below the loss at the start (ln 10 for 10 classes).
"""

import math

import pytest
import torch

from tests.harness import LEARN_ARGS, check_ok, metrics, run_main, summary
from utilities.amp import MixedPrecision

# MLP: bf16 matrix products run on any CPU; 2 epochs of 112 steps.
LEARN = LEARN_ARGS


def test_off_leaves_precision_and_steps_plainly():
    amp = MixedPrecision("off", "cpu")
    layer = torch.nn.Linear(4, 2)
    with amp.autocast():
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    assert amp.scaler is None and amp.state_dict() == {}


def test_bf16_autocasts_the_forward_pass_without_a_scaler():
    amp = MixedPrecision("bf16", "cpu")
    layer = torch.nn.Linear(4, 2)
    with amp.autocast():
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32  # weights stay fp32
    assert amp.scaler is None


def test_fp16_scales_the_loss_and_steps_on_unscaled_gradients():
    torch.manual_seed(0)
    amp = MixedPrecision("fp16", "cpu")
    layer = torch.nn.Linear(4, 1, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    before = layer.weight.detach().clone()
    inputs = torch.ones(2, 4)
    amp.backward(layer(inputs).float().sum())
    scale = amp.scaler.get_scale()
    assert scale > 1
    assert torch.allclose(layer.weight.grad, torch.full((1, 4), 2.0 * scale))  # the scaled gradient
    amp.step(optimizer)
    assert torch.allclose(layer.weight, before - 0.5 * 2.0)  # the step used the true gradient, 2 per weight


def test_fp16_skips_a_step_whose_gradients_overflowed_and_lowers_the_scale():
    amp = MixedPrecision("fp16", "cpu")
    layer = torch.nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    amp.backward(layer(torch.ones(1, 2)).float().sum())
    scale = amp.scaler.get_scale()
    layer.weight.grad[0, 0] = math.inf
    amp.step(optimizer)
    assert torch.equal(layer.weight, before)
    assert amp.scaler.get_scale() < scale
    restored = MixedPrecision("fp16", "cpu")
    restored.load_state_dict(amp.state_dict())
    assert restored.scaler.get_scale() == amp.scaler.get_scale()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="amp"):
        MixedPrecision("fp8", "cpu")


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("fp32")
    check_ok(run_main([*LEARN, "--output-dir", str(output)]))
    return output


def test_bf16_run_trains_and_its_loss_is_close_to_fp32(tmp_path, fp32_run):
    check_ok(run_main([*LEARN, "--amp", "bf16", "--output-dir", str(tmp_path)]))
    fp32_loss, bf16_loss = metrics(fp32_run)[-1]["train_loss"], metrics(tmp_path)[-1]["train_loss"]
    assert bf16_loss < 0.5 * math.log(10)  # it learned: chance is ln 10
    assert abs(bf16_loss - fp32_loss) < 0.05 * fp32_loss + 0.02
    assert abs(summary(tmp_path)["final_test_accuracy"] - summary(fp32_run)["final_test_accuracy"]) < 0.05
    checkpoint = torch.load(tmp_path / "checkpoints" / "epoch-00002.pt", weights_only=False)
    assert checkpoint["amp"] == {}  # bf16 keeps no scaler state


def test_fp16_run_resumes_its_scaler_from_the_checkpoint(tmp_path):
    first = [*LEARN, "--amp", "fp16", "--output-dir", str(tmp_path)]
    check_ok(run_main([*first, "--epochs-per-job", "1"]))
    saved = torch.load(tmp_path / "checkpoints" / "epoch-00001.pt", weights_only=False)["amp"]
    assert saved["scale"] > 1
    check_ok(run_main([*first, "--resume", "auto"]))
    assert [row["epoch"] for row in metrics(tmp_path)] == [1, 2]
    assert math.isfinite(metrics(tmp_path)[-1]["train_loss"])


def test_amp_with_hogwild_workers_is_refused_without_touching_the_output(tmp_path):
    result = run_main([*LEARN, "--training-type", "LAPSGD", "--amp", "bf16", "--output-dir", str(tmp_path / "run")])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --amp is not available for LPPSGD/LAPSGD (their workers train in fp32); use --amp off"
    ]
    assert not (tmp_path / "run").exists()
