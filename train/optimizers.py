"""Layer-wise adaptive optimizers (LARS, LAMB) and the optimizer factory used by the trainer.

LARS: Y. You, I. Gitman, B. Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
Algorithm 1 ("SGD with LARS").
LAMB: Y. You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
ICLR 2020 (arXiv 1904.00962), Algorithm 2.

Both scale each tensor's step by a trust ratio ||w|| / ||update|| so that every layer moves by
about the same fraction of its own norm, which is what lets very large batches keep a large lr.
Neither optimizer communicates: in data-parallel runs the sync classes in `train/sync/` agree
on gradients or parameters, and every rank runs the same local arithmetic.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

OPTIMIZER_NAMES = ("sgd", "adamw", "lars", "lamb")


def _check_at_least(name: str, value: float, low: float) -> None:
    if not value >= low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _is_excluded(param: Tensor, group: dict) -> bool:
    # Biases and norm-layer scales (ndim <= 1) are left out of weight decay and of the trust
    # ratio: their norms say little about a sensible step size, and decaying them hurts. This is
    # the usual large-batch practice (the BERT recipe LAMB was run with excludes bias and
    # LayerNorm from decay; common LARS implementations skip the local lr for them).
    return group["exclude_bias_and_norm"] and param.ndim <= 1


def _ratio_or_one(numerator: Tensor, denominator: Tensor, weight_norm: Tensor, other_norm: Tensor) -> Tensor:
    # The ratio is undefined or meaningless when a layer is all zeros (freshly zero-initialised,
    # or a gradient that vanished); falling back to 1 lets such a layer still move. torch.where
    # keeps this on the device: no host sync per tensor.
    usable = (weight_norm > 0) & (other_norm > 0)
    return torch.where(usable, numerator / denominator, torch.ones_like(numerator))


class _PerTensorOptimizer(torch.optim.Optimizer):
    """Shared by LARS and LAMB: both update each tensor on its own (its trust ratio needs its norms)."""

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        # Groups may override the defaults, so their values are checked too.
        self._check_hyperparameters(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                self._update(param, group)
        return loss


class LARS(_PerTensorOptimizer):
    """Momentum SGD with a layer-wise local lr (You, Gitman, Ginsburg 2017, Algorithm 1).

    Per tensor with weight w and gradient g:
        local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)
                   (1 when ||w|| == 0 or ||g|| == 0)
        v = momentum * v + lr * local_lr * (g + weight_decay * w)
        w = w - v
    With exclude_bias_and_norm, tensors with ndim <= 1 take a plain momentum SGD step
    (local_lr = 1, no weight decay). Every group may override momentum, weight_decay,
    trust_coefficient, eps and exclude_bias_and_norm; lr is read from the group each step so
    torch.optim.lr_scheduler drives it.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        exclude_bias_and_norm: bool = True,
        eps: float = 0.0,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            exclude_bias_and_norm=exclude_bias_and_norm,
            eps=eps,
        )
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _check_hyperparameters(group: dict) -> None:
        _check_at_least("lr", group["lr"], 0.0)
        _check_unit_interval("momentum", group["momentum"])
        _check_at_least("weight_decay", group["weight_decay"], 0.0)
        _check_positive("trust_coefficient", group["trust_coefficient"])
        _check_at_least("eps", group["eps"], 0.0)

    def _update(self, param: Tensor, group: dict) -> None:
        grad = param.grad
        if _is_excluded(param, group):
            scaled_step = grad.mul(group["lr"])
        else:
            weight_decay = group["weight_decay"]
            weight_norm = torch.linalg.vector_norm(param)
            grad_norm = torch.linalg.vector_norm(grad)
            # Algorithm 1: the decay term sits in the denominator so the local lr bounds the
            # whole step g + wd * w, not only the gradient.
            local_lr = _ratio_or_one(
                group["trust_coefficient"] * weight_norm,
                grad_norm + weight_decay * weight_norm + group["eps"],
                weight_norm,
                grad_norm,
            )
            scaled_step = grad.add(param, alpha=weight_decay).mul_(local_lr * group["lr"])
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        velocity = state["momentum_buffer"]
        velocity.mul_(group["momentum"]).add_(scaled_step)
        param.sub_(velocity)


class LAMB(_PerTensorOptimizer):
    """Adam with a layer-wise trust ratio (You et al. 2019, "Training BERT in 76 minutes", Algorithm 2).

    Per tensor with weight w, gradient g and step count t (kept per parameter in state):
        m = b1 * m + (1 - b1) * g;   v = b2 * v + (1 - b2) * g^2
        r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
        u = r + weight_decay * w
        w = w - lr * (||w|| / ||u||) * u      (trust ratio 1 when either norm is 0)
    With exclude_bias_and_norm, tensors with ndim <= 1 take a plain Adam step (no weight decay,
    trust ratio 1). Every group may override betas, eps, weight_decay and exclude_bias_and_norm.
    """

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        exclude_bias_and_norm: bool = True,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, exclude_bias_and_norm=exclude_bias_and_norm
        )
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _check_hyperparameters(group: dict) -> None:
        _check_at_least("lr", group["lr"], 0.0)
        if len(group["betas"]) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {group['betas']}")
        _check_unit_interval("betas[0]", group["betas"][0])
        _check_unit_interval("betas[1]", group["betas"][1])
        _check_at_least("eps", group["eps"], 0.0)
        _check_at_least("weight_decay", group["weight_decay"], 0.0)

    def _update(self, param: Tensor, group: dict) -> None:
        grad = param.grad
        beta1, beta2 = group["betas"]
        state = self.state[param]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # Bias correction as in Adam; LAMB keeps it (Algorithm 2, lines with m_hat, v_hat).
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2 = 1 - beta2 ** state["step"]
        denominator = exp_avg_sq.div(bias_correction2).sqrt_().add_(group["eps"])
        update = exp_avg.div(bias_correction1).div_(denominator)
        if _is_excluded(param, group):
            param.sub_(update, alpha=group["lr"])
            return
        update.add_(param, alpha=group["weight_decay"])
        weight_norm = torch.linalg.vector_norm(param)
        update_norm = torch.linalg.vector_norm(update)
        trust_ratio = _ratio_or_one(weight_norm, update_norm, weight_norm, update_norm)
        param.sub_(update.mul_(trust_ratio * group["lr"]))


@dataclass(frozen=True)
class _OptimizerSettings:
    """The hyperparameters build_optimizer accepts; each builder reads the ones its method uses."""

    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    trust_coefficient: float
    exclude_bias_and_norm: bool
    betas: tuple
    eps: Optional[float]


def _build_sgd(params, settings: _OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.nesterov,
        weight_decay=settings.weight_decay,
    )


def _build_adamw(params, settings: _OptimizerSettings) -> torch.optim.Optimizer:
    eps = 1e-8 if settings.eps is None else settings.eps
    return torch.optim.AdamW(params, lr=settings.lr, betas=settings.betas, eps=eps, weight_decay=settings.weight_decay)


def _build_lars(params, settings: _OptimizerSettings) -> torch.optim.Optimizer:
    eps = 0.0 if settings.eps is None else settings.eps
    return LARS(
        params,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        trust_coefficient=settings.trust_coefficient,
        exclude_bias_and_norm=settings.exclude_bias_and_norm,
        eps=eps,
    )


def _build_lamb(params, settings: _OptimizerSettings) -> torch.optim.Optimizer:
    eps = 1e-6 if settings.eps is None else settings.eps
    return LAMB(
        params,
        lr=settings.lr,
        betas=settings.betas,
        eps=eps,
        weight_decay=settings.weight_decay,
        exclude_bias_and_norm=settings.exclude_bias_and_norm,
    )


_BUILDERS = {"sgd": _build_sgd, "adamw": _build_adamw, "lars": _build_lars, "lamb": _build_lamb}
assert tuple(_BUILDERS) == OPTIMIZER_NAMES


def build_optimizer(
    name: str,
    params,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    trust_coefficient: float = 0.001,
    exclude_bias_and_norm: bool = True,
    betas=(0.9, 0.999),
    eps: Optional[float] = None,
) -> torch.optim.Optimizer:
    """Build the optimizer called `name` (one of OPTIMIZER_NAMES) over `params`.

    Each method reads only its own hyperparameters: momentum and nesterov for sgd (nesterov
    is SGD-only), momentum and trust_coefficient for lars, betas for adamw and lamb.
    eps=None picks each method's usual default (adamw 1e-8, lamb 1e-6, lars 0).
    exclude_bias_and_norm applies to lars and lamb only.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZER_NAMES}")
    settings = _OptimizerSettings(
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
        exclude_bias_and_norm=exclude_bias_and_norm,
        betas=tuple(betas),
        eps=eps,
    )
    return _BUILDERS[name](params, settings)
