"""VGG-11 with batch normalisation for small images.

Simonyan, Zisserman, "Very deep convolutional networks for large-scale image recognition",
ICLR 2015 (configuration A, 11 weight layers), with BatchNorm after every convolution
(Ioffe, Szegedy 2015). As in CIFAR codebases, the three 4096-unit fully connected layers are
replaced by a single Linear(512, num_classes): at 32x32 the features are already 1x1.
"""

from torch import Tensor, nn

VGG11_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """3x3 conv/BN/ReLU layers and 2x2 max pools from a config ("M" = pool),
    global average pool, linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, config: tuple[int | str, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for entry in config:
            if entry == "M":
                # ceil_mode keeps every side >= 1: a 28x28 image goes 14, 7, 4, 2, 1 instead of
                # 14, 7, 3, 1 and then an empty map at the fifth pool. Even sides (32x32) are
                # pooled exactly as without it.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [
                    nn.Conv2d(channels, int(entry), 3, padding=1, bias=False),
                    nn.BatchNorm2d(int(entry)),
                    nn.ReLU(inplace=True),
                ]
                channels = int(entry)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(images)).flatten(1))


def vgg11(in_channels: int, image_size: int, num_classes: int) -> VGG:
    """VGG-11 with BatchNorm (Simonyan & Zisserman 2015, config A). `image_size` is accepted
    for the registry's uniform signature; ceil-mode pooling and the global pool make the
    network size-agnostic."""
    del image_size
    return VGG(in_channels, num_classes, VGG11_CONFIG)
