"""Wide residual networks for CIFAR (Zagoruyko and Komodakis, "Wide residual networks", BMVC 2016).

WRN-d-k: a 3x3 stem of 16 channels, then three groups of (d-4)/6 pre-activation basic blocks
(BN-ReLU-conv3x3, dropout, BN-ReLU-conv3x3) of 16k, 32k and 64k channels, the last two groups
halving the resolution; a final BN-ReLU, global average pool and linear classifier. Where the
width or resolution changes the shortcut is a 1x1 convolution of the pre-activated input, as in
the authors' code. Convolutions have no bias (a BN follows every one). Dropout between the two
convolutions of a block is 0.3, the paper's setting for its best CIFAR results (Sec. 3, Table 6)
and the one LPP-SGD uses. WRN-16-8 has 11.0M and WRN-28-10 36.5M parameters on CIFAR-10 (Table 4).
"""

from torch import Tensor, nn
from torch.nn import functional as F

DROPOUT = 0.3


class WideBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.bn2(self.dropout(out))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int, widen_factor: int, dropout: float = DROPOUT):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth must be 6n+4 with n >= 1, got {depth}")
        blocks_per_group = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        groups, channels = [], 16
        for index, width in enumerate((16 * widen_factor, 32 * widen_factor, 64 * widen_factor)):
            strides = [1 if index == 0 else 2] + [1] * (blocks_per_group - 1)
            blocks = []
            for stride in strides:
                blocks.append(WideBlock(channels, width, stride, dropout))
                channels = width
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        features = F.relu(self.bn(self.groups(self.stem(images))))
        return self.fc(F.adaptive_avg_pool2d(features, 1).flatten(1))


def wrn16_8(in_channels: int, image_size: int, num_classes: int) -> WideResNet:
    """WRN-16-8 (LPP-SGD's "wnet168"); global pooling makes it size-agnostic."""
    del image_size
    return WideResNet(in_channels, num_classes, depth=16, widen_factor=8)


def wrn28_10(in_channels: int, image_size: int, num_classes: int) -> WideResNet:
    """WRN-28-10 (LPP-SGD's "wnet28"); global pooling makes it size-agnostic."""
    del image_size
    return WideResNet(in_channels, num_classes, depth=28, widen_factor=10)
