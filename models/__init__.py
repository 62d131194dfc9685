"""Model registry: every model is built from (in_channels, image_size, num_classes)."""

from collections.abc import Callable

from torch import nn

from models.ghost_batchnorm import GhostBatchNorm, apply_ghost_batch_norm
from models.lenet import lenet5, lenet5w
from models.mlp import mlp
from models.resnet import resnet18, resnet20, resnet32
from models.small import small
from models.torchvision_resnet import tv_resnet18, tv_resnet34, tv_resnet50
from models.vgg import vgg11
from models.wide_resnet import wrn16_8, wrn28_10

_MODEL_BUILDERS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "lenet5": lenet5,
    "lenet5w": lenet5w,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "vgg11": vgg11,
    "mlp": mlp,
    "small": small,
    "resnet32": resnet32,
    "wrn16_8": wrn16_8,
    "wrn28_10": wrn28_10,
    "tv_resnet18": tv_resnet18,
    "tv_resnet34": tv_resnet34,
    "tv_resnet50": tv_resnet50,
}

MODEL_NAMES: tuple[str, ...] = tuple(_MODEL_BUILDERS)


def build_model(name: str, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build the model registered as `name` for in_channels x image_size x image_size images."""
    if name not in _MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    sizes = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    for argument, value in sizes.items():
        if value < 1:
            raise ValueError(f"{argument} must be >= 1, got {value}")
    return _MODEL_BUILDERS[name](in_channels, image_size, num_classes)


__all__ = ["MODEL_NAMES", "build_model", "GhostBatchNorm", "apply_ghost_batch_norm"]
