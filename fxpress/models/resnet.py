"""A ResNet-18-shaped CNN in plain torch, with deterministic weights.

torchvision is not a dependency, so this is the ResNet-18 layout written out:
a 7x7/2 stem conv + BN + ReLU + 3x3/2 max-pool, four stages of two
`BasicBlock`s (64, 128, 256, 512 channels; stride 2 and a 1x1 conv + BN
shortcut where a stage changes shape), global average pooling and a 1000-way
linear classifier. 11.7 M parameters, about 1.8 GMAC at 1x3x224x224.

Weights come from a seeded generator (Kaiming-normal convs, as torchvision
initialises them), and every BatchNorm gets non-trivial affine parameters and
running statistics (mean around 0, variance around 1 but not 1), so folding
BN changes the weights in a way a test can detect. No pretrained weights are
involved: the network exists to exercise the compiler (BN folding, conv
lowering, benchmarks) on a realistic shape, not to classify images.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with an identity (or 1x1 conv+BN) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 layout: BasicBlock x [2, 2, 2, 2], 64-512 channels, `num_classes` logits."""

    def __init__(self, num_classes: int = 1000, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill `model`'s convs, linears and BatchNorms deterministically from `seed`.

    BN statistics are set so that activations stay of order one through the
    18 layers (the variance is drawn around 1, the mean around 0) while every
    channel's scale and shift differ, which is what makes BN folding matter.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            assert m.weight is not None and m.bias is not None  # affine, with running statistics
            assert m.running_mean is not None and m.running_var is not None
            m.weight.copy_(0.5 + torch.rand(n, generator=gen))  # gamma in [0.5, 1.5)
            m.bias.copy_(0.1 * torch.randn(n, generator=gen))  # beta
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))  # in [0.5, 1.5)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / m.in_features**0.5
            m.weight.copy_((torch.rand(m.weight.shape, generator=gen) * 2 - 1) * bound)
            m.bias.copy_((torch.rand(m.bias.shape, generator=gen) * 2 - 1) * bound)
    return model


def resnet18(num_classes: int = 1000, seed: int = 0) -> ResNet18:
    """A ResNet-18-shaped network in eval mode with weights drawn from `seed`."""
    model = ResNet18(num_classes)
    init_weights(model, seed)
    return model.eval()


def example_input(batch: int = 1, size: int = 224, seed: int = 0) -> torch.Tensor:
    """A deterministic ``batch x 3 x size x size`` input, roughly unit-normal."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
