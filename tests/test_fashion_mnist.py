"""fxpress.data.fashion_mnist: the Debian package's files read and checked; missing or broken files name the fix."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from fxpress.data import fashion_mnist
from fxpress.errors import InputError


@pytest.mark.skipif(not fashion_mnist.available("test"), reason="sudo apt-get install dataset-fashion-mnist")
def test_reads_the_test_split():
    images, labels = fashion_mnist.fashion_mnist("test")
    assert images.dtype == torch.uint8 and images.shape == (10_000, 28, 28) and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [1_000] * 10  # the test split is balanced
    x = fashion_mnist.preprocess(images[:8])
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0, 0, 0], torch.tensor((0.0 - fashion_mnist.MEAN) / fashion_mnist.STD))


def test_missing_files_name_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FXPRESS_FASHION_MNIST", str(tmp_path))
    assert not fashion_mnist.available("test")
    with pytest.raises(fashion_mnist.FashionMnistMissingError, match=r"apt-get install dataset-fashion-mnist"):
        fashion_mnist.fashion_mnist("test")
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        fashion_mnist.fashion_mnist("valid")  # type: ignore[arg-type]


def test_broken_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FXPRESS_FASHION_MNIST", str(tmp_path))
    header = np.array([0x0803, 10_000, 28, 28], ">u4").tobytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(100)))  # truncated data
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(InputError, match=r"truncated: the header announces uint8 \[10000, 28, 28\].*reinstall it"):
        fashion_mnist.fashion_mnist("test")
    with pytest.raises(ValueError, match="preprocess takes uint8"):
        fashion_mnist.preprocess(torch.zeros(2, 28, 28))
