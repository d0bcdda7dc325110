"""LeNet-300-100, the MLP of Deep Compression's Table 1 and of the pruning example, and its dense training.

Both `examples/prune_mnist_mlp.py` and `examples/deep_compression_lenet.py`
start from this network trained the same way, so it lives here once.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fxpress.train import schedule_lr


def lenet_300_100() -> nn.Module:
    """The 784-300-100-10 ReLU MLP of LeCun et al. (1998), taking normalised ``[N, 1, 28, 28]`` digits."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def train_lenet_300_100(
    data: Iterable[tuple[torch.Tensor, torch.Tensor]], *, epochs: int, lr: float, seed: int = 0
) -> nn.Module:
    """A freshly initialised (seeded) `lenet_300_100` trained with Adam and a cosine-decayed learning rate."""
    torch.manual_seed(seed)
    model = lenet_300_100()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = schedule_lr(lr, "cosine", epoch, epochs)
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()
