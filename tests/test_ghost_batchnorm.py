"""Ghost batch norm against plain batch norm applied to each ghost batch by hand."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models import build_model
from models.ghost_batchnorm import GhostBatchNorm, apply_ghost_batch_norm

CHANNELS = 3


def make_batch_norm(momentum: float | None = 0.1) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    batch_norm = nn.BatchNorm2d(CHANNELS, momentum=momentum)
    with torch.no_grad():
        batch_norm.weight.uniform_(0.5, 1.5)
        batch_norm.bias.uniform_(-0.5, 0.5)
        batch_norm.running_mean.uniform_(-1.0, 1.0)
        batch_norm.running_var.uniform_(0.5, 2.0)
    return batch_norm


def make_input(batch_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch_size, CHANNELS, 5, 5, generator=generator) * 2.0 + 1.0


def ghost_copy(batch_norm: nn.BatchNorm2d, ghost_batch_size: int) -> nn.Module:
    wrapper = nn.Sequential(batch_norm)
    apply_ghost_batch_norm(wrapper, ghost_batch_size)
    assert isinstance(wrapper[0], GhostBatchNorm)
    return wrapper[0]


def test_training_output_is_plain_batch_norm_per_ghost_batch():
    plain = make_batch_norm()
    weight, bias = plain.weight.detach().clone(), plain.bias.detach().clone()
    inputs = make_input(8)
    expected = torch.cat(
        [
            F.batch_norm(half, None, None, weight, bias, training=True, eps=plain.eps)
            for half in (inputs[:4], inputs[4:])
        ]
    )
    ghost = ghost_copy(plain, 4).train()
    torch.testing.assert_close(ghost(inputs), expected)
    # Not what plain batch norm over the whole batch would give.
    whole = F.batch_norm(inputs, None, None, weight, bias, training=True, eps=plain.eps)
    assert not torch.allclose(whole, expected)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_stats_match_two_sequential_plain_updates(momentum):
    inputs = make_input(8)
    reference = make_batch_norm(momentum).train()
    reference(inputs[:4])
    reference(inputs[4:])
    ghost = ghost_copy(make_batch_norm(momentum), 4).train()
    ghost(inputs)
    torch.testing.assert_close(ghost.running_mean, reference.running_mean)
    torch.testing.assert_close(ghost.running_var, reference.running_var)
    assert ghost.num_batches_tracked.item() == reference.num_batches_tracked.item() == 2


def test_last_ghost_batch_may_be_smaller():
    inputs = make_input(10)
    reference = make_batch_norm().train()
    expected = torch.cat([reference(chunk) for chunk in inputs.split(4)])
    ghost = ghost_copy(make_batch_norm(), 4).train()
    torch.testing.assert_close(ghost(inputs), expected)
    torch.testing.assert_close(ghost.running_var, reference.running_var)


def test_eval_mode_is_plain_batch_norm_with_running_stats():
    inputs = make_input(8)
    plain = make_batch_norm().eval()
    expected = plain(inputs)
    ghost = ghost_copy(make_batch_norm(), 4).eval()
    torch.testing.assert_close(ghost(inputs), expected)


def test_ghost_size_at_least_batch_is_plain_batch_norm_in_training():
    inputs = make_input(8)
    plain = make_batch_norm().train()
    expected = plain(inputs)
    for ghost_batch_size in (8, 16):
        ghost = ghost_copy(make_batch_norm(), ghost_batch_size).train()
        torch.testing.assert_close(ghost(inputs), expected)
        torch.testing.assert_close(ghost.running_mean, plain.running_mean)
        torch.testing.assert_close(ghost.running_var, plain.running_var)


def test_state_dict_keys_and_values_unchanged():
    model = build_model("resnet20", 3, 32, 10)
    before = model.state_dict()
    apply_ghost_batch_norm(model, 4)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before)
    for key in before:
        assert torch.equal(after[key], before[key]), key
    # The plain model loads the ghost model's state and vice versa.
    build_model("resnet20", 3, 32, 10).load_state_dict(after)
    model.load_state_dict(before)


def test_replacement_shares_parameters_with_the_original():
    plain = make_batch_norm()
    ghost = ghost_copy(plain, 4)
    assert ghost.weight is plain.weight and ghost.bias is plain.bias
    assert ghost.running_mean is plain.running_mean


def test_ghost_model_trains_with_batch_not_divisible_by_ghost_size():
    model = apply_ghost_batch_norm(build_model("resnet20", 3, 32, 10), 4).train()
    model(torch.randn(10, 3, 32, 32)).sum().backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_batch_norm_1d_is_replaced_too():
    model = apply_ghost_batch_norm(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)), 3)
    assert isinstance(model[1], GhostBatchNorm)
    inputs = torch.randn(6, 4)
    features = model[0](inputs)
    expected = torch.cat([F.batch_norm(half, None, None, training=True) for half in features.split(3)])
    torch.testing.assert_close(model(inputs), expected)


@pytest.mark.parametrize("ghost_batch_size", [0, -2])
def test_non_positive_ghost_batch_size_raises(ghost_batch_size):
    with pytest.raises(ValueError, match="ghost_batch_size"):
        apply_ghost_batch_norm(nn.Sequential(nn.BatchNorm2d(3)), ghost_batch_size)
    with pytest.raises(ValueError, match="ghost_batch_size"):
        GhostBatchNorm(3, ghost_batch_size)
