"""Ghost batch normalisation.

Hoffer, Hubara, Soudry, "Train longer, generalize better: closing the generalization gap in
large batch training of neural networks", NeurIPS 2017, Section 4 (Algorithm 1). A large
batch is split into "ghost" batches of a fixed small size and each is normalised with its
own statistics, so the noise that batch norm injects stays that of the small batch the
hyper-parameters were tuned for, whatever the (per rank) batch size.
"""

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

_REPLACED_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


class GhostBatchNorm(_BatchNorm):
    """Batch norm over ghost batches of `ghost_batch_size` samples (the last may be smaller).

    It is a `_BatchNorm` with the same parameters and buffers (weight, bias, running_mean,
    running_var, num_batches_tracked), so state_dicts load into the plain model and back.
    In training mode each ghost batch is normalised with its own mean and variance and
    updates the running statistics with the module's momentum, exactly as if the ghost
    batches had been fed one after another to a plain BatchNorm; num_batches_tracked
    therefore counts ghost batches. In eval mode it is the plain BatchNorm.

    Accepts the inputs of BatchNorm1d (N, C) / (N, C, L) and BatchNorm2d (N, C, H, W).
    As with BatchNorm1d, a (N, C) ghost batch of one sample cannot be normalised in training.
    """

    def __init__(
        self,
        num_features: int,
        ghost_batch_size: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        if ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be >= 1, got {ghost_batch_size}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.ghost_batch_size = ghost_batch_size

    @classmethod
    def from_batch_norm(cls, batch_norm: _BatchNorm, ghost_batch_size: int) -> "GhostBatchNorm":
        """A GhostBatchNorm that shares `batch_norm`'s parameter and buffer tensors, so an
        optimizer built on the plain model keeps stepping the same parameters."""
        ghost = cls(
            batch_norm.num_features,
            ghost_batch_size,
            eps=batch_norm.eps,
            momentum=batch_norm.momentum,
            affine=batch_norm.affine,
            track_running_stats=batch_norm.track_running_stats,
        )
        for name, parameter in batch_norm.named_parameters(recurse=False):
            setattr(ghost, name, parameter)
        for name, buffer in batch_norm.named_buffers(recurse=False):
            setattr(ghost, name, buffer)
        return ghost.train(batch_norm.training)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or input.shape[0] <= self.ghost_batch_size:
            return super().forward(input)
        # The plain forward on each chunk both normalises it with its own statistics and
        # applies the same running-statistics update (including momentum=None averaging)
        # that a separate batch would.
        outputs = []
        for chunk in input.split(self.ghost_batch_size):
            outputs.append(super().forward(chunk))
        return torch.cat(outputs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"


def apply_ghost_batch_norm(model: nn.Module, ghost_batch_size: int) -> nn.Module:
    """Replace every BatchNorm1d/BatchNorm2d in `model` by a GhostBatchNorm sharing its
    tensors; returns `model` (or the replacement, if `model` itself is a batch norm)."""
    if ghost_batch_size < 1:
        raise ValueError(f"ghost_batch_size must be >= 1, got {ghost_batch_size}")
    if isinstance(model, _REPLACED_TYPES):
        return GhostBatchNorm.from_batch_norm(model, ghost_batch_size)
    # A module registered in two places stays one module after the swap.
    replacements: dict[int, GhostBatchNorm] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _REPLACED_TYPES):
                if id(child) not in replacements:
                    ghost = GhostBatchNorm.from_batch_norm(child, ghost_batch_size)
                    replacements[id(child)] = ghost
                setattr(parent, name, replacements[id(child)])
    return model
