"""Helpers several test modules share that start no process: config parsing and Hessian quadratics."""

import pytest
import torch
import yaml

from utilities.config import ConfigError, parse_config


def write_yaml(tmp_path, settings, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(settings) if isinstance(settings, dict) else settings)
    return str(path)


def config_error(argv):
    with pytest.raises(ConfigError) as caught:
        parse_config(argv)
    message = str(caught.value)
    assert "\n" not in message, f"a ConfigError must be one line, got {message!r}"
    return message


EIGENVALUES = torch.tensor([5.0, 2.0, 1.0, -0.5], dtype=torch.float64)  # trace 7.5


def symmetric_matrix(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T with a seeded random orthogonal Q."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64)
    )
    return basis @ torch.diag(eigenvalues) @ basis.T


def quadratic(matrix: torch.Tensor, pieces: tuple = (4,)):
    """(loss_fn, params): x = concat(params), loss = 0.5 x^T A x, x at a seeded random point."""
    point = torch.randn(matrix.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = [piece.clone().requires_grad_() for piece in torch.split(point, list(pieces))]

    def loss_fn():
        x = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * x @ matrix @ x

    return loss_fn, params


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
