"""Top-k eigenvalues and stochastic Lanczos quadrature against quadratics 0.5 x^T A x with chosen spectra."""

import pytest
import torch

from tests.support import EIGENVALUES, quadratic, seeded, symmetric_matrix
from tools.hessian_spectrum import density_grid, density_on_grid, plot_density, spectral_density_nodes, top_eigenvalues


@pytest.mark.parametrize("pieces", [(4,), (1, 3)])
def test_top_k_are_the_chosen_eigenvalues_by_magnitude(pieces):
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES), pieces)
    values = top_eigenvalues(loss_fn, params, 4, 500, 1e-14, seeded())
    assert values == pytest.approx([5.0, 2.0, 1.0, -0.5], abs=1e-6)


def test_top_k_on_a_larger_spectrum():
    spectrum = torch.cat(
        [torch.tensor([9.0, 6.0, 4.0], dtype=torch.float64), torch.linspace(-0.5, 1.0, 37, dtype=torch.float64)]
    )
    loss_fn, params = quadratic(symmetric_matrix(spectrum, seed=3), (40,))
    assert top_eigenvalues(loss_fn, params, 3, 500, 1e-13, seeded()) == pytest.approx([9.0, 6.0, 4.0], abs=1e-5)


def test_full_lanczos_recovers_the_spectrum_exactly():
    # n steps in an n-dimensional space: the quadrature nodes are the eigenvalues themselves.
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES))
    for nodes, weights in spectral_density_nodes(loss_fn, params, 10, 5, seeded()):
        assert sorted(nodes.tolist()) == pytest.approx([-0.5, 1.0, 2.0, 5.0], abs=1e-8)
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_density_mass_sits_at_the_eigenvalues_with_the_right_mean():
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES))
    quadratures = spectral_density_nodes(loss_fn, params, 4, 400, seeded(1))
    sigma = 0.05
    grid = torch.linspace(-2, 7, 9001, dtype=torch.float64)
    density = density_on_grid(quadratures, grid, sigma)
    step = (grid[1] - grid[0]).item()
    assert density.sum().item() * step == pytest.approx(1.0, abs=1e-6)
    # Mean of the density is E[v^T A v] / |v|^2 = trace / n = 7.5 / 4 (Rademacher v: |v|^2 = n exactly).
    assert (grid * density).sum().item() * step == pytest.approx(7.5 / 4, abs=0.05)
    # Each eigenvalue carries about 1/n of the mass within 4 sigma; nothing lies elsewhere.
    near = [(grid - value).abs() <= 4 * sigma for value in EIGENVALUES.tolist()]
    for window in near:
        assert density[window].sum().item() * step == pytest.approx(0.25, abs=0.05)
    elsewhere = ~torch.stack(near).any(0)
    assert density[elsewhere].sum().item() * step < 1e-3


def test_fewer_lanczos_steps_still_bracket_the_spectrum_and_keep_the_mean():
    spectrum = torch.cat(
        [torch.tensor([20.0, 12.0], dtype=torch.float64), torch.linspace(-1.0, 2.0, 58, dtype=torch.float64)]
    )
    loss_fn, params = quadratic(symmetric_matrix(spectrum, seed=5), (60,))
    matrix = symmetric_matrix(spectrum, seed=5)
    quadratures = spectral_density_nodes(loss_fn, params, 15, 200, seeded(2))
    nodes = torch.cat([n for n, _ in quadratures])
    assert nodes.min() >= -1.0 - 1e-8 and nodes.max() <= 20.0 + 1e-8
    assert nodes.max().item() == pytest.approx(20.0, abs=1e-6)  # Lanczos finds the outliers first
    # Gauss quadrature is exact for the first moment: each run's mean is v^T A v / |v|^2 for its start v.
    first_start = (torch.randint(0, 2, (60,), generator=seeded(2)) * 2 - 1).double()
    nodes_0, weights_0 = quadratures[0]
    assert (nodes_0 * weights_0).sum().item() == pytest.approx(
        (first_start @ matrix @ first_start).item() / 60, abs=1e-9
    )
    # Over runs it estimates trace / n (standard error here about 0.04).
    mean = sum((n * w).sum().item() for n, w in quadratures) / len(quadratures)
    assert mean == pytest.approx(spectrum.mean().item(), abs=0.15)
    grid, density, sigma = density_grid(quadratures)
    assert grid[0] < -1.0 and grid[-1] > 20.0
    assert density.sum().item() * (grid[1] - grid[0]).item() == pytest.approx(1.0, abs=1e-3)


def test_plot_is_written(tmp_path):
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES))
    grid, density, _ = density_grid(spectral_density_nodes(loss_fn, params, 4, 3, seeded()))
    plot_density(grid, density, str(tmp_path / "density.png"), "test")
    assert (tmp_path / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_counts_are_refused():
    loss_fn, params = quadratic(symmetric_matrix(EIGENVALUES))
    with pytest.raises(ValueError, match="k must be at most"):
        top_eigenvalues(loss_fn, params, 5, 10, 0.0, seeded())
    with pytest.raises(ValueError, match="steps"):
        spectral_density_nodes(loss_fn, params, 0, 1, seeded())
    with pytest.raises(ValueError, match="sigma"):
        density_on_grid([], torch.zeros(3), 0.0)


def test_command_line_writes_top_k_and_the_density_plot(tmp_path, capsys):
    import json

    import yaml

    from models import build_model
    from tools import hessian
    from utilities.config import Config

    config = Config(dataset="synthetic", synthetic_size=300, model="lenet5")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    torch.manual_seed(0)
    torch.save(build_model("lenet5", 3, 32, 10).state_dict(), tmp_path / "model.pt")
    arguments = [
        str(tmp_path),
        "--samples",
        "20",
        "--iterations",
        "300",
        "--tolerance",
        "1e-9",
        "--hutchinson",
        "2",
        "--top-k",
        "3",
        "--density",
        "--lanczos-steps",
        "12",
    ]
    assert hessian.main(arguments) == 0
    result = json.loads((tmp_path / "hessian.json").read_text())
    top = result["top_eigenvalues"]
    assert len(top) == 3 and abs(top[0]) >= abs(top[1]) >= abs(top[2]) > 0
    assert top[0] == pytest.approx(result["top_eigenvalue"], rel=1e-3)
    nodes, weights = result["density"]["nodes"][0], result["density"]["weights"][0]
    assert len(nodes) == 12 and sum(weights) == pytest.approx(1.0, abs=1e-9)
    # Ritz values lie inside the spectrum; with 12 steps the largest is close to the top eigenvalue.
    assert top[0] * 0.9 <= max(nodes) <= top[0] * (1 + 1e-4)
    assert (tmp_path / "hessian_density.png").stat().st_size > 1000
    assert "top 3 eigenvalues" in capsys.readouterr().out
    assert hessian.main([str(tmp_path), "--top-k", "0"]) == 2
