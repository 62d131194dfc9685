"""LPP-SGD's small MNIST network ("small"): the classic PyTorch MNIST example net.

Two unpadded 5x5 convolutions (10 and 20 channels), each followed by a 2x2 max pool and ReLU,
channel dropout (p=0.5) after the second convolution, then 50 hidden units with dropout
(p=0.5) and the classifier: 21,840 parameters on 1x28x28 MNIST. The flattened size follows
``image_size`` (4x4 on 28x28), so it also runs on other small images. It returns logits; the
loop's cross-entropy applies the log-softmax that LPP-SGD's version returns.
"""

from torch import Tensor, nn

from models.lenet import KERNEL_SIZE, POOL_SIZE, feature_map_size

DROPOUT = 0.5


class SmallNet(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        side = feature_map_size(image_size, 2)
        if side < 1:
            raise ValueError(f"image_size must be at least 16 for two 5x5 conv + 2x2 pool stages, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 10, KERNEL_SIZE),
            nn.MaxPool2d(POOL_SIZE),
            nn.ReLU(inplace=True),
            nn.Conv2d(10, 20, KERNEL_SIZE),
            nn.Dropout2d(DROPOUT),
            nn.MaxPool2d(POOL_SIZE),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(20 * side * side, 50),
            nn.ReLU(inplace=True),
            nn.Dropout(DROPOUT),
            nn.Linear(50, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images))


def small(in_channels: int, image_size: int, num_classes: int) -> SmallNet:
    return SmallNet(in_channels, image_size, num_classes)
