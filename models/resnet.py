"""ResNet-20, ResNet-32 and ResNet-18 for small images.

He, Zhang, Ren, Sun, "Deep residual learning for image recognition", CVPR 2016.
ResNet-20 and ResNet-32 are the CIFAR networks of Section 4.2 (6n+2 layers, n=3 and n=5:
three stages of n basic blocks, 16/32/64 channels). ResNet-18 is the ImageNet network of Table 1 with the usual CIFAR
stem: a 3x3 stride-1 convolution and no max pool, because a 7x7 stride-2 stem plus a
max pool would reduce a 32x32 image to 8x8 before the first block.

Both use projection shortcuts (the paper's option B: 1x1 conv + BN) wherever the shape
changes, rather than option A's zero-padded identity, so one block serves both networks.
Global average pooling makes the networks independent of the input size (28 or 32).
"""

from torch import Tensor, nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection (He et al. 2016, Fig. 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem, stages of basic blocks (the first stage keeps the resolution, later ones
    halve it), global average pool, linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stage_channels: tuple[int, ...],
        blocks_per_stage: tuple[int, ...],
    ):
        super().__init__()
        stem_channels = stage_channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = stem_channels
        for index, (out_channels, num_blocks) in enumerate(zip(stage_channels, blocks_per_stage)):
            strides = [1 if index == 0 else 2] + [1] * (num_blocks - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. 2015 ("Delving deep into rectifiers") init, as the ResNet paper uses.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        features = self.pool(self.stages(self.stem(images)))
        return self.fc(features.flatten(1))


def resnet20(in_channels: int, image_size: int, num_classes: int) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2016, Sec. 4.2). `image_size` is accepted for the
    registry's uniform signature; global pooling makes the network size-agnostic."""
    del image_size
    return ResNet(in_channels, num_classes, stage_channels=(16, 32, 64), blocks_per_stage=(3, 3, 3))


def resnet32(in_channels: int, image_size: int, num_classes: int) -> ResNet:
    """CIFAR ResNet-32 (He et al. 2016, Sec. 4.2, n=5; 0.46M parameters in Table 6)."""
    del image_size
    return ResNet(in_channels, num_classes, stage_channels=(16, 32, 64), blocks_per_stage=(5, 5, 5))


def resnet18(in_channels: int, image_size: int, num_classes: int) -> ResNet:
    """ResNet-18 (He et al. 2016, Table 1) with a CIFAR stem. `image_size` is accepted for
    the registry's uniform signature; global pooling makes the network size-agnostic."""
    del image_size
    return ResNet(in_channels, num_classes, stage_channels=(64, 128, 256, 512), blocks_per_stage=(2, 2, 2, 2))
