"""Sharpness of a trained model: the top Hessian eigenvalue and the Hessian trace of its training loss.

    python -m tools.hessian runs/PLSGD-cifar100-lenet5w --samples 1000 --iterations 20 --hutchinson 50
    python -m tools.hessian runs/PLSGD-cifar100-lenet5w --top-k 5 --density --lanczos-steps 90

Reads the run's config.yaml and model.pt, rebuilds its data set as main.py does, takes a fixed
seeded subset of the training split (no augmentation) and estimates, for the mean cross-entropy
on that subset,
  * the eigenvalue of largest magnitude by power iteration on Hessian-vector products (Pearlmutter's
    double backward), the usual sharpness measure (Keskar et al. 2017; Yao et al. 2020, PyHessian),
  * the trace by Hutchinson's estimator, E[z^T H z] = tr H for Rademacher z (Hutchinson 1990).
Prints both and writes ``<run dir>/hessian.json``. ``--top-k K`` adds the K eigenvalues of largest
magnitude and ``--density`` the eigenvalue spectral density by stochastic Lanczos quadrature, plotted
in ``<run dir>/hessian_density.png`` (both in tools.hessian_spectrum).

The model is evaluated in eval mode: BatchNorm then uses its running statistics, so the loss is a
fixed function of the parameters, the one the run's test accuracy was measured with. In train
mode the loss would also depend on the subset's batch statistics (a different function, whose
Hessian couples all samples), and every forward pass would update the running statistics, so each
Hessian-vector product would see a slightly different model. Eval mode also switches dropout off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import torch
import yaml

from dataloaders import DATA_SETTINGS, DataError, build_data
from models import apply_ghost_batch_norm, build_model
from utilities.config import FIELDS, Config

LossFunction = Callable[[], torch.Tensor]


def _dot(first: list, second: list) -> torch.Tensor:
    return sum((a * b).sum() for a, b in zip(first, second))


def hessian_vector_products(loss_fn: LossFunction, params: list) -> Callable[[list], list]:
    """v -> H v for the Hessian of ``loss_fn()`` in ``params``; the gradient graph is built once and reused."""
    loss = loss_fn()
    gradients = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    pairs = [
        (index, gradient) for index, gradient in enumerate(gradients) if gradient is not None and gradient.requires_grad
    ]

    def product(vector: list) -> list:
        if not pairs:  # the loss is at most linear in params
            return [torch.zeros_like(p) for p in params]
        directional = sum((gradient * vector[index]).sum() for index, gradient in pairs)
        result = torch.autograd.grad(directional, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if r is None else r.detach() for p, r in zip(params, result)]

    return product


def power_iteration(
    loss_fn: LossFunction, params: list, iterations: int, tolerance: float, generator: torch.Generator
) -> tuple:
    """(eigenvalue of largest magnitude, iterations used): v <- Hv / |Hv| from a seeded random start,
    the estimate being the Rayleigh quotient v^T H v; stops when it changes by less than
    ``tolerance`` relative to itself."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    hvp = hessian_vector_products(loss_fn, params)
    vector = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    norm = _dot(vector, vector).sqrt()
    vector = [v / norm for v in vector]
    estimate = None
    for step in range(1, iterations + 1):
        product = hvp(vector)
        rayleigh = _dot(vector, product).item()  # |v| = 1
        norm = _dot(product, product).sqrt()
        if norm.item() == 0:
            return 0.0, step
        vector = [p / norm for p in product]
        if estimate is not None and abs(rayleigh - estimate) <= tolerance * abs(estimate):
            return rayleigh, step
        estimate = rayleigh
    return estimate, iterations


def top_eigenvalue(
    loss_fn: LossFunction, params: list, iterations: int, tolerance: float, generator: torch.Generator
) -> float:
    """The Hessian eigenvalue of largest magnitude (the top one for a loss near a minimum)."""
    return power_iteration(loss_fn, params, iterations, tolerance, generator)[0]


def hutchinson_trace(loss_fn: LossFunction, params: list, samples: int, generator: torch.Generator) -> float:
    """Mean of z^T H z over ``samples`` Rademacher vectors z (entries +-1), an unbiased estimate of tr H."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    hvp = hessian_vector_products(loss_fn, params)
    total = 0.0
    for _ in range(samples):
        signs = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p.device, p.dtype) for p in params]
        total += _dot(signs, hvp(signs)).item()
    return total / samples


def load_config(run_dir: str) -> Config:
    with open(os.path.join(run_dir, "config.yaml")) as handle:
        data = yaml.safe_load(handle)
    # The `run:` section holds facts about the run (code version, world size), not settings.
    return Config(**{key: value for key, value in data.items() if key in FIELDS})


def training_subset(config: Config, data_dir: str, samples: int, seed: int) -> tuple:
    """``samples`` seeded images of the run's training split (rank 0 of 1 sees all of it), normalised, unaugmented."""
    if config.dataset == "imagenet":
        raise DataError("the Hessian tool needs a tensor-resident data set; --dataset imagenet is not supported")
    settings = {name: getattr(config, name) for name in DATA_SETTINGS}
    data = build_data(config.dataset, **{**settings, "data_dir": data_dir, "augment": False})
    train = data.train
    chosen = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(seed))[:samples]
    return data, train.normalizer(train.images[chosen]), train.labels[chosen]


def trained_model(config: Config, run_dir: str, data) -> torch.nn.Module:
    model = build_model(config.model, data.channels, data.image_size, data.num_classes)
    if config.ghost_batch_size:
        apply_ghost_batch_norm(model, config.ghost_batch_size)
    model.load_state_dict(torch.load(os.path.join(run_dir, "model.pt"), map_location="cpu", weights_only=True))
    return model.eval()


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m tools.hessian", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run: config.yaml and model.pt")
    parser.add_argument("--samples", type=int, default=1000, help="training images the loss is averaged over")
    parser.add_argument("--iterations", type=int, default=20, help="most power iterations")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="stop at this relative change of the estimate")
    parser.add_argument("--hutchinson", type=int, default=50, help="Rademacher vectors for the trace estimate")
    parser.add_argument("--seed", type=int, default=0, help="seed for the subset and the random vectors")
    parser.add_argument("--data-dir", help="where the data set is (default: the run's data_dir)")
    parser.add_argument("--top-k", type=int, default=1, help="also the k eigenvalues of largest magnitude (k > 1)")
    parser.add_argument(
        "--density",
        action="store_true",
        help="eigenvalue density by stochastic Lanczos quadrature, plotted in hessian_density.png",
    )
    parser.add_argument("--lanczos-steps", type=int, default=90, help="--density: Lanczos steps per start vector")
    parser.add_argument("--slq-runs", type=int, default=1, help="--density: random start vectors averaged")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    for name in ("samples", "iterations", "hutchinson", "top_k", "lanczos_steps", "slq_runs"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    try:
        config = load_config(args.run_dir)
        data, inputs, labels = training_subset(config, args.data_dir or config.data_dir, args.samples, args.seed)
        model = trained_model(config, args.run_dir, data)
    except (OSError, DataError, TypeError, ValueError, RuntimeError, yaml.YAMLError) as error:
        print(f"error: {args.run_dir}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_fn() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(inputs), labels)

    with torch.no_grad():
        loss = loss_fn().item()
    eigenvalue, used = power_iteration(
        loss_fn, params, args.iterations, args.tolerance, torch.Generator().manual_seed(args.seed + 1)
    )
    trace = hutchinson_trace(loss_fn, params, args.hutchinson, torch.Generator().manual_seed(args.seed + 2))
    result = {
        "top_eigenvalue": eigenvalue,
        "trace": trace,
        "samples": len(labels),
        "iterations": used,
        "hutchinson": args.hutchinson,
        "seed": args.seed,
        "loss": loss,
    }
    if args.top_k > 1 or args.density:
        from tools.hessian_spectrum import spectrum_results  # it imports this module

        result.update(spectrum_results(loss_fn, params, args, os.path.join(args.run_dir, "hessian_density.png")))
    with open(os.path.join(args.run_dir, "hessian.json"), "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(
        f"{args.run_dir}: top Hessian eigenvalue {eigenvalue:.6g} ({used} power iterations), trace {trace:.6g} "
        f"({args.hutchinson} Rademacher vectors); mean loss {loss:.4f} on {len(labels)} training images"
    )
    if "top_eigenvalues" in result:
        print(f"top {args.top_k} eigenvalues: {', '.join(f'{value:.6g}' for value in result['top_eigenvalues'])}")
    if "density" in result:
        print(
            f"spectral density ({args.slq_runs} x {args.lanczos_steps} Lanczos steps) plotted in "
            f"{os.path.join(args.run_dir, 'hessian_density.png')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
