"""A small version of examples/log_quant_mnist.py (its full run is committed under examples/results/): the pretrained
MNIST CNN with 4-bit log-level weights, post-training, within 0.5 points of fp32 (skips where MNIST or ccexam is
missing)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import load_example


def _mnist_and_ccexam_present() -> bool:
    from fxpress.data import mnist

    return mnist.available("train") and mnist.available("test") and importlib.util.find_spec("ccexam") is not None


@pytest.mark.skipif(not _mnist_and_ccexam_present(), reason="needs the MNIST files (make data) and ccexam (make setup)")
def test_four_bit_log_weights_on_mnist_stay_near_fp32():
    """ccexam's CNN, 4-bit log weights {0, +-1, ..., +-64} x scale, int8 activations: on 2,000 test images within
    0.5 points of fp32, every layer int8, only the log levels in the weights."""
    threads = torch.get_num_threads()
    try:
        result = load_example("log_quant_mnist").run(
            log_bits=(4,), test=2000, compile=False, compare_rounding=False, baselines=False, verbose=False
        )
    finally:
        torch.set_num_threads(threads)
    entry = result["variants"]["log 4"]
    assert entry["float"] == {}
    assert entry["weight_values"] == [-64, -32, -16, -8, -4, -2, -1, 0, 1, 2, 4, 8, 16, 32, 64]
    assert entry["int8"] >= result["fp32"] - 0.5, result
