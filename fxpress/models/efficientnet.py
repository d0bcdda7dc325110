"""An EfficientNet-Lite0-shaped CNN in plain torch, with deterministic weights.

EfficientNet-Lite0 is the mobile/edge variant of EfficientNet-B0 (no
squeeze-excitation, ReLU6 instead of swish, a fixed 32-channel stem and
1280-channel head), the shape most int8 edge deployments meet: depthwise
3x3 and 5x5 convs between 1x1 expansions and projections, stride-2 stages,
inverted residuals. Written out here (no torchvision, no timm, no downloads):

    stem 3x3/2 conv 32 + BN + ReLU6
    MBConv stages (expand ratio, kernel, stride, out channels, repeats):
      1 3 1  16 1 | 6 3 2  24 2 | 6 5 2  40 2 | 6 3 2  80 3
      6 5 1 112 3 | 6 5 2 192 4 | 6 3 1 320 1
    head 1x1 conv 1280 + BN + ReLU6, global average pool, linear 1000

About 4.7 M parameters and 0.4 GMAC at 1x3x224x224. Weights and BatchNorm
statistics come from a seeded generator (resnet.py's `init_weights`), so the
network exercises the compiler on a realistic shape without classifying
anything.
"""

from __future__ import annotations

import torch
from torch import nn

from fxpress.models.resnet import init_weights

# (expand ratio, kernel, stride, out channels, repeats) per stage
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (when ratio > 1), depthwise kxk, 1x1 project; identity shortcut if shapes match."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 layout (see module docstring), `num_classes` logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 32, 3, stride=2)
        blocks: list[nn.Module] = []
        cin = 32
        for expand, kernel, stride, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def efficientnet_lite0(num_classes: int = 1000, seed: int = 0) -> EfficientNetLite0:
    """An EfficientNet-Lite0-shaped network in eval mode with weights drawn from `seed`."""
    model = EfficientNetLite0(num_classes)
    init_weights(model, seed)
    return model.eval()
