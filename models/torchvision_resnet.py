"""torchvision's ImageNet ResNets (He et al. 2016, Table 1), untrained, as LPP-SGD uses them.

Unlike ``resnet18`` (CIFAR stem), these keep the 7x7 stride-2 stem and max pool meant for
224x224 input. ``num_classes`` follows the data; a stem for other than 3 input channels is
rebuilt with the same shape and initialisation.
"""

from torch import nn


def _torchvision_resnet(name: str, in_channels: int, num_classes: int) -> nn.Module:
    from torchvision import models  # imported here: only these models need torchvision

    model = getattr(models, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def tv_resnet18(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size  # adaptive pooling: any input of at least 32x32 works
    return _torchvision_resnet("resnet18", in_channels, num_classes)


def tv_resnet34(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size
    return _torchvision_resnet("resnet34", in_channels, num_classes)


def tv_resnet50(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size
    return _torchvision_resnet("resnet50", in_channels, num_classes)
