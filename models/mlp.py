"""A two-hidden-layer multilayer perceptron baseline (512 and 256 ReLU units)."""

from torch import nn


def mlp(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """Flatten -> 512 -> ReLU -> 256 -> ReLU -> num_classes."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )
