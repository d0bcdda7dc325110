"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017), read offline from Debian's ``dataset-fashion-mnist`` package.

    images, labels = fashion_mnist("test")        # uint8 [10000, 28, 28], int64 [10000]
    x = preprocess(images)                        # float32 [10000, 1, 28, 28], normalised
    sudo apt-get install dataset-fashion-mnist    # once: the four gzipped IDX files

Zalando's 28x28 grey images of ten kinds of clothing (`CLASSES`), in MNIST's
format and sizes (60,000 training, 10,000 test images), but harder: a small
CNN gets about 90 % instead of 99 %, so a teacher's soft labels have more to
say. The files are the package's gzipped IDX files, read from
``$FXPRESS_FASHION_MNIST`` when set, else `DEBIAN_DIR`; nothing is downloaded.
`fashion_mnist` raises `FashionMnistMissingError` naming the install command
when they are not there (tests skip on it), `available` asks without raising,
and the contents are checked like MNIST's (`fxpress.data.mnist.parse_idx`:
the header against the data; shapes, counts, labels 0-9).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from fxpress.data.mnist import FILES, Split, parse_idx
from fxpress.errors import InputError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL = "sudo apt-get install dataset-fashion-mnist  (or set FXPRESS_FASHION_MNIST to a folder with the .gz files)"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # of the training images' pixels in [0, 1]


class FashionMnistMissingError(InputError, FileNotFoundError):
    """The Fashion-MNIST files are not on disk; the message names the command that installs them."""


def data_dir() -> Path:
    """Where the gzipped IDX files are: ``$FXPRESS_FASHION_MNIST``, else `DEBIAN_DIR`."""
    root = os.environ.get("FXPRESS_FASHION_MNIST")
    return Path(root).expanduser() if root else DEBIAN_DIR


def available(split: Split = "test") -> bool:
    """Whether both files of `split` are on disk (their contents are checked when read)."""
    return split in FILES and all((data_dir() / f"{name}.gz").is_file() for name in FILES[split][:2])


def fashion_mnist(split: Split = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 ``[N, 28, 28]``, labels int64 ``[N]``) of `split` (test: N=10,000; train: 60,000)."""
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(FILES)}")
    root = data_dir()
    image_file, label_file, count = FILES[split]
    paths = [root / f"{name}.gz" for name in (image_file, label_file)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FashionMnistMissingError(f"Fashion-MNIST {split} split: {', '.join(missing)} not in {root}; {INSTALL}")
    fix = f"reinstall it: {INSTALL}"
    images, labels = (parse_idx(gzip.decompress(p.read_bytes()), str(p), fix) for p in paths)
    if images.dtype != np.uint8 or images.shape != (count, 28, 28):
        raise InputError(f"{paths[0]}: {images.dtype} {list(images.shape)}, want uint8 [{count}, 28, 28]; {fix}")
    if labels.dtype != np.uint8 or labels.shape != (count,) or int(labels.max()) > 9:
        raise InputError(f"{paths[1]}: want {count} uint8 labels 0-9, got {labels.dtype} {list(labels.shape)}; {fix}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[N, 28, 28]`` -> float32 ``[N, 1, 28, 28]``, scaled to [0, 1] and normalised by `MEAN`, `STD`."""
    if images.dtype != torch.uint8 or tuple(images.shape[-2:]) != (28, 28):
        raise ValueError(f"preprocess takes uint8 [N, 28, 28] images, got {images.dtype} {list(images.shape)}")
    return ((images.reshape(-1, 1, 28, 28).float() / 255) - MEAN) / STD
