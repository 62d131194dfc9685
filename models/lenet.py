"""LeNet-5 and its wide CIFAR variant.

LeNet-5: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998 (6 and 16 channel 5x5 convolutions, then 120, 84 units).

Wide variant ("lenet5w"): the 64/64-channel, 384/192-unit network of the TensorFlow
CIFAR-10 tutorial, used as the CIFAR-100 model in the local SGD studies of Lin, Stich,
Patel, Jaggi, "Don't use large mini-batches, use local SGD", ICLR 2020. We keep LeNet's
unpadded 5x5 convolutions and 2x2 max pools and drop the tutorial's local response
normalisation, so both variants share one class.
"""

from torch import Tensor, nn

KERNEL_SIZE = 5
POOL_SIZE = 2


def feature_map_size(image_size: int, num_stages: int) -> int:
    """Side length after `num_stages` of (unpadded 5x5 conv, 2x2 max pool)."""
    size = image_size
    for _ in range(num_stages):
        size = (size - KERNEL_SIZE + 1) // POOL_SIZE
    return size


class LeNet(nn.Module):
    """Two conv/ReLU/max-pool stages followed by a ReLU MLP head.

    The flattened feature size is computed from `image_size`, so the same network
    runs on 1x28x28 MNIST (16*4*4 features) and 3x32x32 CIFAR (16*5*5 features)
    without padding tricks.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        conv_channels: tuple[int, int],
        hidden_features: tuple[int, int],
    ):
        super().__init__()
        side = feature_map_size(image_size, len(conv_channels))
        if side < 1:
            raise ValueError(
                f"image_size must be at least 16 for LeNet's two 5x5 conv + 2x2 pool stages, got {image_size}"
            )
        first, second = conv_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, first, KERNEL_SIZE),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(POOL_SIZE),
            nn.Conv2d(first, second, KERNEL_SIZE),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(POOL_SIZE),
        )
        hidden_first, hidden_second = hidden_features
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(second * side * side, hidden_first),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_first, hidden_second),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_second, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images))


def lenet5(in_channels: int, image_size: int, num_classes: int) -> LeNet:
    """Classic LeNet-5 (LeCun et al. 1998) with ReLU and max pooling."""
    return LeNet(in_channels, image_size, num_classes, conv_channels=(6, 16), hidden_features=(120, 84))


def lenet5w(in_channels: int, image_size: int, num_classes: int) -> LeNet:
    """Wide LeNet of the CIFAR local SGD studies (Lin et al. 2020): 64/64 channels,
    384/192 units."""
    return LeNet(in_channels, image_size, num_classes, conv_channels=(64, 64), hidden_features=(384, 192))
