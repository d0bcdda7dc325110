"""A zoo of architectures for the structured-pruning tests, and their shared helpers.

Each model is small (captures in well under a second) but has the exact channel
structure of its namesake: residual adds, concatenation, depthwise and grouped
convs, a channel shuffle, squeeze-excitation, attention heads. `zeroed` is the
numeric oracle of pruning: the eager model with the channels a plan removes set
to zero in every member parameter.
"""

from __future__ import annotations

import copy
from functools import cache

import torch
import torch.nn.functional as F
from conftest import randomize_bn
from torch import nn

import fxpress
from fxpress.passes.prune import ChannelGroups, PrunePlan


def bn(c: int) -> nn.BatchNorm2d:
    return randomize_bn(nn.BatchNorm2d(c))  # type: ignore[return-value]


class PlainCNN(nn.Module):
    """conv-bn-relu, pool, strided conv-bn-relu, flatten -> linear (each channel: 16 linear inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), bn(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 1)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), bn(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), bn(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetBasic(nn.Module):
    """Stem, an identity basic block, a downsampling basic block (1x1 conv shortcut)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), bn(8)
        self.layer1, self.layer2 = BasicBlock(8, 8, 1), BasicBlock(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(F.relu(self.bn(self.stem(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Bottleneck(nn.Module):
    def __init__(self, c: int, mid: int, groups: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, mid, 1, bias=False), bn(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, groups=groups, bias=False), bn(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, c, 1, bias=False), bn(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.relu(self.bn3(self.conv3(y)) + x)


class ResNetBottleneck(nn.Module):
    """Two bottleneck blocks on a 16-channel stream; ``groups=4`` makes them ResNeXt blocks."""

    def __init__(self, groups: int = 1, mid: int = 8) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), bn(16)
        self.block1, self.block2 = Bottleneck(16, mid, groups), Bottleneck(16, mid, groups)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(F.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def ResNeXt() -> ResNetBottleneck:
    return ResNetBottleneck(groups=4, mid=16)


class DenseNet(nn.Module):
    """Two dense layers (each concatenates 4 new channels) and a 1x1 transition."""

    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1, self.conv1 = bn(8), nn.Conv2d(8, growth, 3, padding=1, bias=False)
        self.bn2, self.conv2 = bn(8 + growth), nn.Conv2d(8 + growth, growth, 3, padding=1, bias=False)
        self.bn3, self.trans = bn(8 + 2 * growth), nn.Conv2d(8 + 2 * growth, 8, 1, bias=False)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.conv1(F.relu(self.bn1(x)))], 1)
        x = torch.cat([x, self.conv2(F.relu(self.bn2(x)))], 1)
        x = self.trans(F.relu(self.bn3(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, t: int = 4) -> None:
        super().__init__()
        h = c * t
        self.expand, self.bn1 = nn.Conv2d(c, h, 1, bias=False), bn(h)
        self.dw, self.bn2 = nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), bn(h)
        self.project, self.bn3 = nn.Conv2d(h, c, 1, bias=False), bn(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn2(self.dw(F.relu6(self.bn1(self.expand(x))))))
        return x + self.bn3(self.project(y))


class MobileNetV2(nn.Module):
    """Stem, an inverted residual (expand 4x, depthwise 3x3, project, add), a 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), bn(8)
        self.block = InvertedResidual(8)
        self.head, self.fc = nn.Conv2d(8, 16, 1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu6(self.bn(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu6(self.head(x)), 1).flatten(1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleNet(nn.Module):
    """A ShuffleNetV2 unit: chunk in two, a pw-dw-pw branch, concat, channel shuffle (view/transpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), bn(16)
        self.pw1, self.bn1 = nn.Conv2d(8, 8, 1, bias=False), bn(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), bn(8)
        self.pw2, self.bn3 = nn.Conv2d(8, 8, 1, bias=False), bn(8)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = F.relu(self.bn(self.stem(x))).chunk(2, dim=1)
        b = F.relu(self.bn3(self.pw2(self.bn2(self.dw(F.relu(self.bn1(self.pw1(b))))))))
        return self.fc(channel_shuffle(torch.cat([a, b], 1), 2).mean((2, 3)))


class SqueezeExcite(nn.Module):
    """conv-bn-relu scaled per channel by sigmoid(fc2(relu(fc1(pool(x))))), then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1), bn(16)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.conv2, self.fc = nn.Conv2d(16, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.fc(F.relu(self.conv2(x * w)).mean((2, 3)))


class ViTBlock(nn.Module):
    """Patch embedding, one pre-norm block (fused qkv, 4 heads of 8, GELU MLP), mean-pool head."""

    def __init__(self, d: int = 32, heads: int = 4, mlp: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, mlp), nn.Linear(mlp, d)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, c = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(a)
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(self.norm(x).mean(1))


ZOO = {
    "plain-cnn": (PlainCNN, (2, 3, 8, 8)),
    "resnet-basic": (ResNetBasic, (2, 3, 8, 8)),
    "resnet-bottleneck": (ResNetBottleneck, (2, 3, 8, 8)),
    "densenet": (DenseNet, (2, 3, 8, 8)),
    "mobilenetv2": (MobileNetV2, (2, 3, 8, 8)),
    "resnext": (ResNeXt, (2, 3, 8, 8)),
    "shufflenet": (ShuffleNet, (2, 3, 8, 8)),
    "squeeze-excite": (SqueezeExcite, (2, 3, 8, 8)),
    "vit": (ViTBlock, (2, 3, 16, 16)),
}


@cache
def build(name: str) -> tuple[nn.Module, torch.Tensor, fxpress.Graph]:
    """(eval model, example input, captured graph) for a zoo entry, seeded; captured once per process.

    Callers must not change them: `fxpress.optimize` works on a copy and `zeroed` deep-copies.
    """
    make, shape = ZOO[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return model, x, fxpress.capture(model, (x,))


def zeroed(model: nn.Module, groups: ChannelGroups, plan: PrunePlan) -> nn.Module:
    """The pruning oracle: a copy of `model` with every member slice of every removed unit set to 0."""
    out = copy.deepcopy(model)
    tensors = dict(out.named_parameters()) | dict(out.named_buffers())
    with torch.no_grad():
        for g in groups:
            for unit in plan.removed.get(g.id, []):
                for m in g.members:
                    tensors[m.param].index_fill_(m.axis, torch.as_tensor(m.indices(int(unit))), 0.0)
    return out


@cache
def minilm() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], fxpress.Graph]:
    """all-MiniLM-L6-v2 (real weights), two real sentences of 16 tokens, and its graph; loaded once."""
    from fxpress.models import minilm as m

    model = m.sentence_encoder()
    inputs = m.example_inputs(2, 16)
    return model, inputs, fxpress.capture(model, inputs)
