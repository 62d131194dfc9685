"""Hessian estimates against quadratics 0.5 x^T A x, whose Hessian is A: eigenvalues and trace known exactly."""

import math

import pytest
import torch

from tests.support import EIGENVALUES, quadratic, seeded, symmetric_matrix
from tools.hessian import hutchinson_trace, power_iteration, top_eigenvalue


@pytest.mark.parametrize("pieces", [(4,), (1, 3), (2, 2)])
def test_power_iteration_finds_the_top_eigenvalue(pieces):
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES), pieces)
    assert abs(top_eigenvalue(loss_fn, params, 200, 1e-13, seeded()) - 5.0) < 1e-6


def test_power_iteration_stops_when_the_estimate_settles():
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES))
    value, used = power_iteration(loss_fn, params, 200, 1e-4, seeded())
    assert used < 200 and abs(value - 5.0) < 1e-2
    # |lambda_2 / lambda_1| = 0.4: a handful of iterations, not the cap.
    assert used < 20


def test_power_iteration_stops_at_the_iteration_cap():
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES))
    assert power_iteration(loss_fn, params, 3, 0.0, seeded())[1] == 3


def test_power_iteration_on_a_two_dimensional_parameter_tensor():
    matrix = symmetric_matrix(EIGENVALUES)
    weight = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    loss_fn = lambda: 0.5 * weight.reshape(-1) @ matrix @ weight.reshape(-1)  # noqa: E731
    assert abs(top_eigenvalue(loss_fn, [weight], 200, 1e-13, seeded()) - 5.0) < 1e-6


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # z^T A z = sum_i a_ii z_i^2 = trace A for every Rademacher z.
    loss_fn, params = quadratic(torch.diag(EIGENVALUES), (1, 3))
    assert hutchinson_trace(loss_fn, params, 3, seeded()) == pytest.approx(7.5, abs=1e-12)


@pytest.mark.parametrize("pieces", [(4,), (1, 3)])
def test_hutchinson_estimates_the_trace(pieces):
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES), pieces)
    estimate = hutchinson_trace(loss_fn, params, 4000, seeded())
    assert abs(estimate - 7.5) < 0.03 * 7.5


def test_hutchinson_is_reproducible_with_the_same_seed():
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES))
    assert hutchinson_trace(loss_fn, params, 10, seeded(3)) == hutchinson_trace(loss_fn, params, 10, seeded(3))


def test_parameters_the_loss_ignores_get_a_zero_hessian_block():
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES))
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    assert abs(top_eigenvalue(loss_fn, [*params, unused], 200, 1e-13, seeded()) - 5.0) < 1e-6
    assert math.isfinite(hutchinson_trace(loss_fn, [*params, unused], 5, seeded()))


def test_bad_counts_are_refused():
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES))
    with pytest.raises(ValueError, match="iterations"):
        top_eigenvalue(loss_fn, params, 0, 1e-4, seeded())
    with pytest.raises(ValueError, match="samples"):
        hutchinson_trace(loss_fn, params, 0, seeded())
