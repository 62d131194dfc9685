"""Shapes, gradients and layer sizes of every registered model."""

import pytest
import torch

from models import MODEL_NAMES, build_model

# (in_channels, image_size, num_classes): MNIST and CIFAR-100.
IMAGE_SHAPES = [(1, 28, 10), (3, 32, 100)]
# Wide and ImageNet networks cost seconds per pass on a CPU: one shape each, in tests of their own.
HEAVY = ("wrn16_8", "wrn28_10", "tv_resnet18", "tv_resnet34", "tv_resnet50")
LIGHT = tuple(name for name in MODEL_NAMES if name not in HEAVY)


@pytest.mark.parametrize("in_channels, image_size, num_classes", IMAGE_SHAPES)
@pytest.mark.parametrize("name", LIGHT)
def test_forward_shape_and_backward(name, in_channels, image_size, num_classes):
    torch.manual_seed(0)
    model = build_model(name, in_channels, image_size, num_classes)
    images = torch.randn(2, in_channels, image_size, image_size)
    logits = model(images)
    assert logits.shape == (2, num_classes)
    logits.sum().backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name


def test_registry_lists_the_documented_models():
    assert MODEL_NAMES == (
        "lenet5",
        "lenet5w",
        "resnet20",
        "resnet18",
        "vgg11",
        "mlp",
        "small",
        "resnet32",
        "wrn16_8",
        "wrn28_10",
        "tv_resnet18",
        "tv_resnet34",
        "tv_resnet50",
    )


def test_unknown_name_raises_and_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'alexnet'; choose one of: lenet5, lenet5w"):
        build_model("alexnet", 3, 32, 10)


@pytest.mark.parametrize(
    "argument, sizes",
    [("in_channels", (0, 32, 10)), ("image_size", (3, 0, 10)), ("num_classes", (3, 32, 0))],
)
def test_non_positive_sizes_raise(argument, sizes):
    with pytest.raises(ValueError, match=argument):
        build_model("mlp", *sizes)


def test_lenet5_rejects_images_too_small_for_two_stages():
    with pytest.raises(ValueError, match="image_size"):
        build_model("lenet5", 1, 12, 10)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_lenet5w_layer_sizes_on_cifar100():
    # 32 -conv5-> 28 -pool-> 14 -conv5-> 10 -pool-> 5, so 64*5*5 = 1600 features.
    # conv1 3*64*25 + 64       =   4,864
    # conv2 64*64*25 + 64      = 102,464
    # fc1   1600*384 + 384     = 614,784
    # fc2   384*192 + 192      =  73,920
    # fc3   192*100 + 100      =  19,300
    # total                    = 815,332
    model = build_model("lenet5w", 3, 32, 100)
    assert parameter_count(model) == 815_332
    batch_norm_types = torch.nn.modules.batchnorm._BatchNorm
    assert not any(isinstance(module, batch_norm_types) for module in model.modules())


def test_lenet5_feature_size_follows_image_size():
    # 28 -> 24 -> 12 -> 8 -> 4 (16*4*4 = 256); 32 -> 28 -> 14 -> 10 -> 5 (16*5*5 = 400).
    assert build_model("lenet5", 1, 28, 10).classifier[1].in_features == 256
    assert build_model("lenet5", 3, 32, 10).classifier[1].in_features == 400


def test_resnet20_has_twenty_weight_layers_and_uses_projection_shortcuts():
    model = build_model("resnet20", 3, 32, 10)
    # 1 stem conv + 3 stages * 3 blocks * 2 convs + 1 fc = 20; plus 2 projection 1x1 convs.
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(conv.kernel_size == (3, 3) for conv in convs) == 19
    assert sum(conv.kernel_size == (1, 1) for conv in convs) == 2
    assert model.fc.in_features == 64
    # About 0.27M parameters, as in He et al. 2016 Table 6 (ours is slightly larger: option B).
    assert 0.26e6 < parameter_count(model) < 0.28e6


def test_resnet18_parameter_count():
    # torchvision's resnet18 has 11,689,512 parameters with a 7x7x3 stem and 1000 classes;
    # the 3x3x3 stem saves 64*3*(49-9) = 7,680 and the 10-class fc saves 512*990 + 990.
    model = build_model("resnet18", 3, 32, 10)
    assert parameter_count(model) == 11_689_512 - 7_680 - (512 * 990 + 990)


def test_vgg11_keeps_a_spatial_map_on_28x28():
    model = build_model("vgg11", 1, 28, 10)
    assert model.features(torch.zeros(1, 1, 28, 28)).shape == (1, 512, 1, 1)
    assert model.classifier.in_features == 512


def one_training_step(model: torch.nn.Module, inputs: torch.Tensor, num_classes: int) -> float:
    """Loss after one SGD step on a batch; every gradient and the loss must be finite."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    targets = torch.arange(len(inputs)) % num_classes
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
    optimizer.step()
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(model(inputs), targets)
    assert torch.isfinite(loss) and torch.isfinite(after)
    return after.item()


def test_small_is_lpp_sgds_mnist_net():
    # conv1 1*10*25+10 = 260, conv2 10*20*25+20 = 5,020, fc1 320*50+50 = 16,050, fc2 50*10+10 = 510.
    model = build_model("small", 1, 28, 10)
    assert parameter_count(model) == 21_840
    assert model.classifier[1].in_features == 320
    # Dropout is active in training and off in evaluation.
    images = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(images), model(images))
    model.train()
    assert not torch.equal(model(images), model(images))


def test_resnet32_depth_and_parameter_count():
    model = build_model("resnet32", 3, 32, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # 1 stem conv + 3 stages * 5 blocks * 2 convs + 1 fc = 32 weight layers.
    assert sum(conv.kernel_size == (3, 3) for conv in convs) == 31
    # He et al. 2016 Table 6: 0.46M (option A); the two projection shortcuts add 2.7K.
    assert parameter_count(model) == 466_906
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name, expected", [("wrn16_8", 10_961_370), ("wrn28_10", 36_479_194)])
def test_wide_resnets_match_the_paper_and_train_a_step(name, expected):
    # Zagoruyko & Komodakis 2016, Table 4 (CIFAR-10): WRN-16-8 11.0M, WRN-28-10 36.5M parameters.
    torch.manual_seed(0)
    model = build_model(name, 3, 32, 10)
    assert parameter_count(model) == expected
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    one_training_step(model, torch.randn(2, 3, 32, 32), 10)


def test_wide_resnet_depth_must_be_6n_plus_4():
    from models.wide_resnet import WideResNet

    with pytest.raises(ValueError, match="depth"):
        WideResNet(3, 10, depth=20, widen_factor=2)


@pytest.mark.parametrize(
    "name, imagenet_count", [("tv_resnet18", 11_689_512), ("tv_resnet34", 21_797_672), ("tv_resnet50", 25_557_032)]
)
def test_torchvision_resnets_on_imagenet_shapes(name, imagenet_count):
    torch.manual_seed(0)
    model = build_model(name, 3, 224, 1000)
    assert parameter_count(model) == imagenet_count  # torchvision's published counts
    assert isinstance(model.maxpool, torch.nn.MaxPool2d) and model.conv1.kernel_size == (7, 7)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_resnet50"])
def test_torchvision_resnets_train_a_step_and_follow_the_data(name):
    torch.manual_seed(0)
    model = build_model(name, 1, 64, 7)  # greyscale, 7 classes: stem and classifier follow the data
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    one_training_step(model, torch.randn(2, 1, 64, 64), 7)


def test_config_accepts_every_registered_model():
    from utilities.config import parse_config

    for name in MODEL_NAMES:
        assert parse_config(["--model", name]).model == name
