"""The coverage zoo's hand-written classics: small models with the real structure of their namesakes.

Each architecture here is written out by hand (nothing is downloaded, torchvision is not used) at a size
that captures in well under a second, but with the structure that makes its namesake hard for a compiler:
LeNet's tanh and average pools, AlexNet's 11x11 stride-4 stem and local response norm, VGG's stacks,
Inception's four-branch concat, DenseNet's growing concat, ShuffleNet's grouped 1x1 convs and channel
shuffle, SqueezeNet's fire modules, U-Net's transposed convs and skip concats, MobileNet V1/V3 and
EfficientNet-Lite's depthwise blocks (ReLU6, hardswish, squeeze-excitation), ResNeXt's grouped bottleneck,
SE-ResNet, MLP-Mixer's token mixing, ``nn.TransformerEncoder``, a dilated causal TCN, LSTM and GRU
classifiers, a 3D-conv net, an autoencoder, an FPN detector head with a tuple output, and a Kim-style
text CNN over token ids.

Every `ZooEntry.build` seeds torch, builds the model, gives every BatchNorm random running statistics and
affine parameters (an identity BatchNorm would hide fold-bn bugs), puts it in eval mode and returns it
with batch-2 inputs from its own seeded generator. The models do not work around fxpress: where fxpress
cannot capture or run one, the coverage table shows the error. When they were written (torch 2.13, TVM
0.27) every entry built, ran eagerly and captured with `fxpress.capture` (outputs equal to eager), and
``default``, the int8 pipeline, ``prune-channels`` and ``sparsify`` ran on every graph; of the fp32
compiles tried (alexnet, c3d, lstm, gru, transformer-encoder, text-cnn) only text-cnn failed: TVM's
PyTorch importer has no ``aten.amax`` (fxpress converts it since: backends/tvm/aten_fixes.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tools.zoo.entry import ZooEntry

Inputs = tuple[torch.Tensor, ...]


def randomize_batchnorms(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every BatchNorm in `model` non-trivial running statistics and affine parameters (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm):
                continue
            c = m.num_features
            if m.track_running_stats and m.running_mean is not None and m.running_var is not None:
                m.running_mean.copy_(torch.rand(c, generator=generator) * 2 - 1)
                m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(c, generator=generator) - 0.5)
    return model


def conv_bn(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: nn.Module | None = None
) -> nn.Sequential:
    """conv (no bias, 'same' padding) -> BatchNorm -> activation (ReLU unless given)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act if act is not None else nn.ReLU(inplace=True),
    )


# --- classic vision -----------------------------------------------------------------------------------


class LeNet5(nn.Module):
    """LeNet-5: 5x5 convs with tanh and average pools, three fully connected layers (1x32x32 in)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c3, self.c5 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5), nn.Conv2d(16, 120, 5)
        self.f6, self.out = nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.tanh(self.c1(x)), 2)
        x = F.avg_pool2d(torch.tanh(self.c3(x)), 2)
        x = torch.tanh(self.c5(x)).flatten(1)
        return self.out(torch.tanh(self.f6(x)))


class AlexNetStyle(nn.Module):
    """AlexNet's shape: 11x11 stride-4 stem, local response norm, overlapping 3x3/2 max pools, dropout MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 11, 4, 2),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(32, 48, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(48, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(32 * 4, 64), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class VGGStyle(nn.Module):
    """VGG's shape: stacks of 3x3 conv-bn-relu separated by 2x2 max pools, flatten, a dropout MLP."""

    def __init__(self, cfg: tuple[int | str, ...] = (16, 16, "M", 32, 32, "M", 64, 64, 64, "M")) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(conv_bn(cin, int(v)))
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 4 * 4, 64), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class InceptionBlock(nn.Module):
    """GoogLeNet's module: 1x1 | 1x1->3x3 | 1x1->3x3->3x3 | 3x3 max pool->1x1, concatenated on channels."""

    def __init__(self, cin: int, b1: int, b3r: int, b3: int, b5r: int, b5: int, pool: int) -> None:
        super().__init__()
        self.branch1 = conv_bn(cin, b1, 1)
        self.branch3 = nn.Sequential(conv_bn(cin, b3r, 1), conv_bn(b3r, b3))
        self.branch5 = nn.Sequential(conv_bn(cin, b5r, 1), conv_bn(b5r, b5), conv_bn(b5, b5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, pool, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class InceptionNet(nn.Module):
    """Stem, two inception blocks with a max pool between, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.inc1 = InceptionBlock(16, 8, 8, 12, 4, 6, 6)  # 32 out
        self.inc2 = InceptionBlock(32, 12, 12, 16, 4, 8, 8)  # 44 out
        self.fc = nn.Linear(44, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc2(F.max_pool2d(self.inc1(self.stem(x)), 3, 2, 1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DenseLayer(nn.Module):
    """DenseNet-BC layer: bn-relu-1x1 conv (bottleneck), bn-relu-3x3 conv, concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([x, y], 1)


class DenseNet(nn.Module):
    """Stem, a dense block of three layers (growth 6), a transition (bn-relu-1x1-avgpool), a second block."""

    def __init__(self, growth: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        c = 12
        block1 = []
        for _ in range(3):
            block1.append(DenseLayer(c, growth))
            c += growth
        self.block1 = nn.Sequential(*block1)
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2))
        c //= 2
        self.block2 = nn.Sequential(DenseLayer(c, growth), DenseLayer(c + growth, growth))
        c += 2 * growth
        self.norm, self.fc = nn.BatchNorm2d(c), nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1).flatten(1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: (b, g, c/g, h, w) -> transpose the group axes -> (b, c, h, w)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet V1 unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; add (stride 1) or concat with avgpool."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int) -> None:
        super().__init__()
        self.groups, self.stride = groups, stride
        mid = cout // 4
        out = cout - cin if stride == 2 else cout
        self.gconv1 = nn.Sequential(nn.Conv2d(cin, mid, 1, groups=groups, bias=False), nn.BatchNorm2d(mid))
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.gconv2 = nn.Sequential(nn.Conv2d(mid, out, 1, groups=groups, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = channel_shuffle(F.relu(self.gconv1(x)), self.groups)
        y = self.gconv2(self.dw(y))
        if self.stride == 2:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), y], 1))
        return F.relu(x + y)


class ShuffleNet(nn.Module):
    """ShuffleNet V1 (g=4): stem, a stride-2 concat unit, two stride-1 add units, global pool, linear."""

    def __init__(self, groups: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 24, 3, 2)
        self.units = nn.Sequential(
            ShuffleUnit(24, 48, groups, 2), ShuffleUnit(48, 48, groups, 1), ShuffleUnit(48, 48, groups, 1)
        )
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1x1, then expand 1x1 and 3x3 side by side, concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1, self.expand3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1(s)), F.relu(self.expand3(s))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1's shape: stem, fire modules between ceil-mode max pools, a 1x1 conv classifier, avg pool."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 8, 16),
            Fire(32, 8, 16),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 12, 24),
            Fire(48, 12, 24),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(48, 10, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.classifier(self.features(x)), 1).flatten(1)


class MobileNetV1(nn.Module):
    """MobileNet V1: a conv stem, then depthwise 3x3 + pointwise 1x1 pairs (bn, ReLU6), global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        cfg = [(16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 96, 2)]
        layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=nn.ReLU6(inplace=True))]
        for cin, cout, s in cfg:
            layers.append(conv_bn(cin, cin, 3, s, groups=cin, act=nn.ReLU6(inplace=True)))
            layers.append(conv_bn(cin, cout, 1, act=nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class SqueezeExcitation(nn.Module):
    """Squeeze-excitation: global pool, 1x1 reduce, activation, 1x1 expand, gate (sigmoid or hardsigmoid)."""

    def __init__(self, c: int, reduced: int, gate: nn.Module | None = None, act: nn.Module | None = None) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, reduced, 1), nn.Conv2d(reduced, c, 1)
        self.act = act if act is not None else nn.ReLU(inplace=True)
        self.gate = gate if gate is not None else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * s


class MBConvV3(nn.Module):
    """MobileNet V3 block: expand 1x1, depthwise kxk, optional SE (hardsigmoid), project; residual when it fits."""

    def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, se: bool, hs: bool) -> None:
        super().__init__()
        act: Callable[[], nn.Module] = nn.Hardswish if hs else nn.ReLU
        self.residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, act=act()))
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act()))
        if se:
            layers.append(SqueezeExcitation(exp, max(8, exp // 4), gate=nn.Hardsigmoid()))
        layers.append(nn.Sequential(nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """MobileNet V3-small's shape: hardswish stem, V3 blocks (SE, hardswish, 5x5), 1x1 head, hardswish MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.Hardswish())
        self.blocks = nn.Sequential(
            MBConvV3(16, 16, 16, 3, 2, se=True, hs=False),
            MBConvV3(16, 48, 24, 3, 2, se=False, hs=False),
            MBConvV3(24, 64, 24, 3, 1, se=False, hs=False),
            MBConvV3(24, 64, 32, 5, 1, se=True, hs=True),
        )
        self.head = conv_bn(32, 96, 1, act=nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(96, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class MBConvLite(nn.Module):
    """EfficientNet-Lite's MBConv: expand 1x1 (ReLU6), depthwise kxk (ReLU6), project; no SE; residual when it fits."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        h = cin * expand
        self.residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, h, 1, act=nn.ReLU6(inplace=True)))
        layers += [
            conv_bn(h, h, k, stride, groups=h, act=nn.ReLU6(inplace=True)),
            nn.Sequential(nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout)),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0's shape, shrunk: ReLU6 stem, MBConv stages (3x3 and 5x5, expand 1 and 6), 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(
            MBConvLite(16, 8, 3, 1, 1),
            MBConvLite(8, 12, 3, 2, 6),
            MBConvLite(12, 12, 3, 1, 6),
            MBConvLite(12, 20, 5, 2, 6),
            MBConvLite(20, 20, 5, 1, 6),
        )
        self.head = conv_bn(20, 64, 1, act=nn.ReLU6(inplace=True))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1).flatten(1))


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 reduce, grouped 3x3 (cardinality 8), 1x1 expand; projection shortcut when needed."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, cardinality: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, width, 1),
            conv_bn(width, width, 3, stride, groups=cardinality),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class ResNeXt(nn.Module):
    """ResNeXt-50 (8x4d)'s shape, shrunk: stem with max pool, three grouped bottlenecks, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3), nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(
            ResNeXtBlock(16, 32, 32, 1), ResNeXtBlock(32, 32, 32, 1), ResNeXtBlock(32, 64, 64, 2)
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class SEBasicBlock(nn.Module):
    """SE-ResNet basic block: two 3x3 conv-bn, squeeze-excitation on the residual branch, add, relu."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.se = SqueezeExcitation(cout, cout // 4)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.se(self.conv2(self.conv1(x))) + self.short(x))


class SEResNet(nn.Module):
    """SE-ResNet: stem, an identity SE block, a downsampling SE block, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3)
        self.layers = nn.Sequential(SEBasicBlock(16, 16, 1), SEBasicBlock(16, 32, 2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class MixerBlock(nn.Module):
    """MLP-Mixer block: token-mixing MLP over the patch axis (transposed), channel-mixing MLP, both pre-norm."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.channel = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel(self.norm2(x))


class MLPMixer(nn.Module):
    """MLP-Mixer: 4x4 patch embedding (strided conv), two mixer blocks, layer norm, mean over tokens, linear."""

    def __init__(self, dim: int = 32, patch: int = 4, size: int = 16) -> None:
        super().__init__()
        tokens = (size // patch) ** 2
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(MixerBlock(tokens, dim, 32, 64), MixerBlock(tokens, dim, 32, 64))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(1))


# --- dense prediction -----------------------------------------------------------------------------------


class UNet(nn.Module):
    """U-Net: two down levels (double conv-bn-relu, max pool), a bottleneck, transposed-conv ups with skip concats."""

    def __init__(self, cin: int = 3, classes: int = 4, c: int = 8) -> None:
        super().__init__()

        def double(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(conv_bn(a, b), conv_bn(b, b))

        self.down1, self.down2, self.mid = double(cin, c), double(c, 2 * c), double(2 * c, 4 * c)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2), double(4 * c, 2 * c)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * c, c, 2, 2), double(2 * c, c)
        self.out = nn.Conv2d(c, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        m = self.mid(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(m), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.out(u1)


class FPNDetector(nn.Module):
    """An FPN detector head: a 3-stage backbone, 1x1 laterals, top-down nearest upsampling with adds, 3x3 smoothing,
    and one shared class/box head over each level; returns (class logits, box deltas) of every level as a tuple."""

    def __init__(self, d: int = 16, anchors: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.c2, self.c3, self.c4 = conv_bn(3, 16, 3, 2), conv_bn(16, 24, 3, 2), conv_bn(24, 32, 3, 2)
        self.lat2, self.lat3, self.lat4 = nn.Conv2d(16, d, 1), nn.Conv2d(24, d, 1), nn.Conv2d(32, d, 1)
        self.smooth = nn.ModuleList(nn.Conv2d(d, d, 3, padding=1) for _ in range(3))
        self.head = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.ReLU(inplace=True))
        self.cls = nn.Conv2d(d, anchors * classes, 3, padding=1)
        self.box = nn.Conv2d(d, anchors * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c2 = self.c2(x)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        p4 = self.lat4(c4)
        p3 = self.lat3(c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
        p2 = self.lat2(c2) + F.interpolate(p3, scale_factor=2.0, mode="nearest")
        outs: list[torch.Tensor] = []
        for smooth, p in zip(self.smooth, (p2, p3, p4), strict=True):
            h = self.head(smooth(p))
            outs += [self.cls(h), self.box(h)]
        return tuple(outs)


class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder: strided conv-bn encoder, linear bottleneck, transposed-conv decoder, sigmoid."""

    def __init__(self, latent: int = 16) -> None:
        super().__init__()
        self.enc = nn.Sequential(conv_bn(1, 8, 3, 2), conv_bn(8, 16, 3, 2))
        self.to_latent, self.from_latent = nn.Linear(16 * 7 * 7, latent), nn.Linear(latent, 16 * 7 * 7)
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(16, 8, 3, 2, 1, output_padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(8, 1, 3, 2, 1, output_padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.to_latent(self.enc(x).flatten(1))
        h = F.relu(self.from_latent(z)).view(-1, 16, 7, 7)
        return torch.sigmoid(self.dec(h))


class Tiny3DNet(nn.Module):
    """A C3D-style video net: 3D conv-bn-relu, a (1,2,2) then 2x2x2 max pool, a second 3D conv, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1, bias=False), nn.BatchNorm3d(8), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(
            nn.Conv3d(8, 16, 3, padding=1, bias=False), nn.BatchNorm3d(16), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool3d(self.conv1(x), (1, 2, 2))
        x = F.max_pool3d(self.conv2(x), 2)
        return self.fc(F.adaptive_avg_pool3d(x, 1).flatten(1))


# --- sequences ------------------------------------------------------------------------------------------


class TemporalBlock(nn.Module):
    """TCN block: two dilated causal Conv1d (left padding only), ReLU, dropout, 1x1 residual when widths differ."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int) -> None:
        super().__init__()
        self.pad = (k - 1) * dilation
        self.conv1 = nn.Conv1d(cin, cout, k, dilation=dilation)
        self.conv2 = nn.Conv1d(cout, cout, k, dilation=dilation)
        self.drop = nn.Dropout(0.1)
        self.down: nn.Module = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        y = self.drop(F.relu(self.conv2(F.pad(y, (self.pad, 0)))))
        return F.relu(y + self.down(x))


class TCN(nn.Module):
    """A temporal convolutional network: three blocks with dilations 1, 2, 4, the last step to a linear."""

    def __init__(self, cin: int = 4, c: int = 16, k: int = 3) -> None:
        super().__init__()
        self.blocks = nn.Sequential(TemporalBlock(cin, c, k, 1), TemporalBlock(c, c, k, 2), TemporalBlock(c, c, k, 4))
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(x)[:, :, -1])


class RNNClassifier(nn.Module):
    """A two-layer LSTM or GRU over (batch, time, features), the last time step through a linear."""

    def __init__(self, cell: str, features: int = 12, hidden: int = 24) -> None:
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(features, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class Encoder(nn.Module):
    """``nn.TransformerEncoder`` (two post-norm layers, 4 heads, GELU) over a linear input projection, mean-pooled."""

    def __init__(self, features: int = 16, d: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(features, d)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.proj(x)).mean(1))


class TextCNN(nn.Module):
    """Kim's text CNN: token embeddings, Conv1d of widths 2, 3, 4 side by side, max over time, concat, linear."""

    def __init__(self, vocab: int = 100, dim: int = 16, c: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, c, k) for k in (2, 3, 4))
        self.fc = nn.Linear(3 * c, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).transpose(1, 2)
        return self.fc(torch.cat([F.relu(conv(x)).amax(2) for conv in self.convs], 1))


class BNMLP(nn.Module):
    """A tabular MLP: linear-BatchNorm1d-ReLU twice, dropout, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(20, 32),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Linear(32, 32),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(32, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --- the entries ------------------------------------------------------------------------------------------


def _builder(
    make: Callable[[], nn.Module], *shapes: tuple[int, ...], seed: int = 0, tokens: int = 0
) -> Callable[[], tuple[nn.Module, Inputs]]:
    """A `ZooEntry.build`: seeded weights, randomized BatchNorms, eval mode, inputs of `shapes` (ids if `tokens`)."""

    def build() -> tuple[nn.Module, Inputs]:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        model = randomize_batchnorms(make(), gen).eval()
        if tokens:
            inputs = tuple(torch.randint(0, tokens, s, generator=gen) for s in shapes)
        else:
            inputs = tuple(torch.randn(*s, generator=gen) for s in shapes)
        return model, inputs

    return build


VISION = "classic-vision"
DENSE = "classic-dense-prediction"
SEQUENCE = "classic-sequence"
VIDEO = "classic-video"
TABULAR = "classic-tabular"

ENTRIES: list[ZooEntry] = [
    ZooEntry("lenet5", VISION, _builder(LeNet5, (2, 1, 32, 32)), fast=True, note="tanh, avg pools, no BatchNorm"),
    ZooEntry("alexnet-style", VISION, _builder(AlexNetStyle, (2, 3, 96, 96)), note="11x11/4 stem, LRN, dropout MLP"),
    ZooEntry("vgg-style", VISION, _builder(VGGStyle, (2, 3, 32, 32)), note="3x3 conv-bn-relu stacks, flatten MLP"),
    ZooEntry("inception-style", VISION, _builder(InceptionNet, (2, 3, 32, 32)), note="four-branch concat blocks"),
    ZooEntry("densenet-bc", VISION, _builder(DenseNet, (2, 3, 32, 32)), note="bn-relu-conv dense concat, transition"),
    ZooEntry("shufflenet-v1", VISION, _builder(ShuffleNet, (2, 3, 32, 32)), note="grouped 1x1, shuffle, concat unit"),
    ZooEntry("squeezenet", VISION, _builder(SqueezeNet, (2, 3, 64, 64)), note="fire modules, ceil-mode max pools"),
    ZooEntry(
        "mobilenet-v1", VISION, _builder(MobileNetV1, (2, 3, 32, 32)), fast=True, note="depthwise + pointwise, ReLU6"
    ),
    ZooEntry("mobilenet-v3-style", VISION, _builder(MobileNetV3, (2, 3, 32, 32)), note="hardswish, SE hardsigmoid"),
    ZooEntry(
        "efficientnet-lite0-style", VISION, _builder(EfficientNetLite, (2, 3, 32, 32)), note="ReLU6 MBConv, no SE"
    ),
    ZooEntry("resnext-style", VISION, _builder(ResNeXt, (2, 3, 32, 32)), note="grouped 3x3 bottleneck (cardinality 8)"),
    ZooEntry("se-resnet", VISION, _builder(SEResNet, (2, 3, 32, 32)), note="SE on the residual branch"),
    ZooEntry("mlp-mixer", VISION, _builder(MLPMixer, (2, 3, 16, 16)), note="token-mixing MLP over transposed patches"),
    ZooEntry("unet", DENSE, _builder(UNet, (2, 3, 32, 32)), note="transposed convs, skip concats, per-pixel output"),
    ZooEntry("fpn-detector", DENSE, _builder(FPNDetector, (2, 3, 32, 32)), note="top-down adds, tuple of 6 outputs"),
    ZooEntry("conv-autoencoder", DENSE, _builder(ConvAutoencoder, (2, 1, 28, 28)), note="linear bottleneck, sigmoid"),
    ZooEntry("c3d-tiny", VIDEO, _builder(Tiny3DNet, (2, 3, 4, 16, 16)), note="Conv3d, BatchNorm3d, max_pool3d"),
    ZooEntry("tcn", SEQUENCE, _builder(TCN, (2, 4, 32)), fast=True, note="dilated causal Conv1d, left padding"),
    ZooEntry(
        "lstm-classifier",
        SEQUENCE,
        _builder(lambda: RNNClassifier("lstm"), (2, 10, 12)),
        prunable=False,
        note="two-layer nn.LSTM",
    ),
    ZooEntry(
        "gru-classifier",
        SEQUENCE,
        _builder(lambda: RNNClassifier("gru"), (2, 10, 12)),
        prunable=False,
        note="two-layer nn.GRU",
    ),
    ZooEntry("transformer-encoder", SEQUENCE, _builder(Encoder, (2, 8, 16)), note="nn.TransformerEncoder, 2 layers"),
    ZooEntry(
        "text-cnn",
        SEQUENCE,
        _builder(TextCNN, (2, 12), tokens=100),
        note="embedding, Conv1d widths 2-4, amax (TVM's importer lacks it; aten_fixes.py converts it)",
    ),
    ZooEntry("bn-mlp", TABULAR, _builder(BNMLP, (2, 20)), fast=True, note="Linear-BatchNorm1d-ReLU"),
]
