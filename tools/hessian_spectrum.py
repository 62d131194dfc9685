"""The Hessian's top-k eigenvalues and its eigenvalue spectral density, from Hessian-vector products.

* Top-k: power iteration deflated by the eigenvectors already found (each new iterate is kept
  orthogonal to them), giving the k eigenvalues of largest magnitude, as PyHessian does
  (Yao et al. 2020, "PyHessian: neural networks through the lens of the Hessian").
* Density: stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao 2019, "An investigation into
  neural net optimization via Hessian eigenvalue density", Sec. 2 and App. A; Golub and Meurant).
  From a random unit vector v, m Lanczos steps give a tridiagonal T = U diag(theta) U^T; the
  nodes theta_i with weights w_i = U[0, i]^2 are a Gauss quadrature for v^T f(H) v, whose
  expectation over v is (1/n) sum_j f(lambda_j). Averaging over runs and smoothing each node with
  a Gaussian of width sigma gives the density phi(t) = (1/n) sum_j g_sigma(t - lambda_j), which
  integrates to 1 and has mean trace(H)/n. Lanczos is fully reorthogonalised (in float64) so the
  nodes stay accurate; it stores m vectors of the parameters' size.
"""

from __future__ import annotations

import math

import torch

from tools.hessian import LossFunction, hessian_vector_products


def _flat_products(loss_fn: LossFunction, params: list):
    """v -> H v on flat float64 vectors (the parameters' own dtype for the products themselves)."""
    hvp = hessian_vector_products(loss_fn, params)
    sizes = [p.numel() for p in params]

    def product(vector: torch.Tensor) -> torch.Tensor:
        pieces = [piece.view_as(p).to(p.dtype) for piece, p in zip(vector.split(sizes), params)]
        return torch.cat([r.reshape(-1) for r in hvp(pieces)]).to(torch.float64)

    return product, sum(sizes), params[0].device


def _orthogonalise(vector: torch.Tensor, basis: list) -> torch.Tensor:
    # Twice ("twice is enough", Parlett): one Gram-Schmidt pass loses orthogonality in floating point.
    for _ in range(2):
        for other in basis:
            vector = vector - (vector @ other) * other
    return vector


def top_eigenvalues(
    loss_fn: LossFunction, params: list, k: int, iterations: int, tolerance: float, generator: torch.Generator
) -> list:
    """The ``k`` Hessian eigenvalues of largest magnitude, largest magnitude first."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    product, size, device = _flat_products(loss_fn, params)
    if k > size:
        raise ValueError(f"k must be at most the number of parameters ({size}), got {k}")
    values, vectors = [], []
    for _ in range(k):
        vector = _orthogonalise(torch.randn(size, generator=generator, dtype=torch.float64).to(device), vectors)
        vector = vector / vector.norm()
        estimate = None
        for _ in range(iterations):
            image = _orthogonalise(product(vector), vectors)  # deflated: H restricted to the complement
            rayleigh = (vector @ image).item()
            if image.norm() == 0:
                break
            vector = image / image.norm()
            converged = estimate is not None and abs(rayleigh - estimate) <= tolerance * abs(estimate)
            estimate = rayleigh
            if converged:
                break
        values.append(estimate if estimate is not None else 0.0)
        vectors.append(vector)
    # Converged, they come out in this order; stopped early at close eigenvalues, they may not.
    return sorted(values, key=abs, reverse=True)


def lanczos(product, start: torch.Tensor, steps: int) -> tuple:
    """(nodes, weights) of the Gauss quadrature from ``steps`` Lanczos steps started at ``start``;
    fewer nodes when the Krylov space is exhausted earlier (then the quadrature is exact)."""
    vector = start / start.norm()
    basis, alphas, betas = [vector], [], []
    image = product(vector)
    for step in range(steps):
        alpha = (vector @ image).item()
        alphas.append(alpha)
        residual = _orthogonalise(image - alpha * vector, basis)
        beta = residual.norm().item()
        scale = max(abs(a) for a in alphas + betas) or 1.0
        if step == steps - 1 or beta <= 1e-10 * scale:
            break
        betas.append(beta)
        previous, vector = vector, residual / beta
        basis.append(vector)
        image = product(vector) - beta * previous
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    nodes, eigenvectors = torch.linalg.eigh(tridiagonal)
    return nodes, eigenvectors[0] ** 2


def spectral_density_nodes(
    loss_fn: LossFunction, params: list, steps: int, runs: int, generator: torch.Generator
) -> list:
    """One (nodes, weights) quadrature per run, each from a Rademacher start vector; weights sum to 1."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    product, size, device = _flat_products(loss_fn, params)
    quadratures = []
    for _ in range(runs):
        signs = (torch.randint(0, 2, (size,), generator=generator) * 2 - 1).to(device, torch.float64)
        quadratures.append(lanczos(product, signs, steps))
    return quadratures


def density_on_grid(quadratures: list, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """phi(t) at every grid point: the runs' quadratures averaged, each node a Gaussian of width sigma."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    density = torch.zeros_like(grid, dtype=torch.float64)
    for nodes, weights in quadratures:
        kernel = torch.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        density += kernel @ weights
    return density / len(quadratures)


def density_grid(quadratures: list, points: int = 1000, sigma_ratio: float = 1e-2) -> tuple:
    """(grid, density, sigma) spanning every node with 5 sigma to spare; sigma is a fraction of the span."""
    nodes = torch.cat([n for n, _ in quadratures])
    low, high = nodes.min().item(), nodes.max().item()
    sigma = sigma_ratio * max(high - low, abs(high), 1e-12)
    grid = torch.linspace(low - 5 * sigma, high + 5 * sigma, points, dtype=torch.float64)
    return grid, density_on_grid(quadratures, grid, sigma), sigma


def plot_density(grid: torch.Tensor, density: torch.Tensor, path: str, title: str) -> None:
    """The density on a log scale, as Ghorbani et al. plot it (the bulk near 0 dwarfs the outliers)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    axes.semilogy(grid.numpy(), density.clamp_min(1e-12).numpy())
    axes.set_ylim(bottom=max(1e-8, density.max().item() * 1e-10))
    axes.set_xlabel("eigenvalue")
    axes.set_ylabel("density (log scale)")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def spectrum_results(loss_fn: LossFunction, params: list, args, plot_path: str) -> dict:
    """The ``python -m tools.hessian`` additions: top-k eigenvalues and the plotted density."""
    result = {}
    if args.top_k > 1:
        result["top_eigenvalues"] = top_eigenvalues(
            loss_fn, params, args.top_k, args.iterations, args.tolerance, torch.Generator().manual_seed(args.seed + 3)
        )
    if args.density:
        quadratures = spectral_density_nodes(
            loss_fn, params, args.lanczos_steps, args.slq_runs, torch.Generator().manual_seed(args.seed + 4)
        )
        grid, density, sigma = density_grid(quadratures)
        plot_density(
            grid,
            density,
            plot_path,
            f"Hessian eigenvalue density ({args.slq_runs} x {args.lanczos_steps} Lanczos steps)",
        )
        result["density"] = {
            "nodes": [n.tolist() for n, _ in quadratures],
            "weights": [w.tolist() for _, w in quadratures],
            "sigma": sigma,
            "lanczos_steps": args.lanczos_steps,
            "runs": args.slq_runs,
        }
    return result
