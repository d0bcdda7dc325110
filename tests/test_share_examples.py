"""Small versions of the weight-sharing examples (their full runs are committed under examples/results/):
Deep Compression on LeNet-300-100 (examples/deep_compression_lenet.py) and HashedNets (examples/hashednets_mnist.py),
both on a few thousand real MNIST images; skipped where the MNIST files are missing (make data)."""

from __future__ import annotations

import pytest
import torch
from conftest import load_example

from fxpress.data import mnist
from fxpress.sharing import SharedWeights

pytestmark = pytest.mark.skipif(
    not (mnist.available("train") and mnist.available("test")), reason="needs the MNIST files (make data)"
)


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_deep_compression_small():
    """4,000 images, 5-bit sharing: the centroids train, sharing and zeros hold, the sizes add up; a second seed."""
    result = load_example("deep_compression_lenet").run(
        bits=(5,), subset=4000, train_epochs=3, prune_epochs=3, ramp_epochs=1, share_epochs=1, seeds=(1,), verbose=False
    )
    graphs, error = result["graphs"], result["test_error_percent"]
    pruned, tuned = graphs["pruned"], graphs["tuned_5bit"]
    assert abs(error["tuned_5bit"] - error["pruned"]) < 1.0, error
    for name in ("1.weight", "3.weight", "5.weight"):
        w = tuned.param(name)
        assert torch.equal(w == 0, pruned.param(name) == 0)
        assert torch.unique(w[w != 0]).numel() <= 32
        node = tuned.fx.find_nodes(op="get_attr", target=name)[0]
        assert node.meta["fxpress"][SharedWeights.key] == SharedWeights("kmeans", 32, 5, 0, True)
    sizes = result["sizes"]["tuned_5bit"]
    assert sizes["dense_fp32_bytes"] == 266_610 * 4
    assert sizes["ratio_stored"] > 5 and sizes["ratio_entropy_coded"] > 30, sizes
    assert result["tvm_x86"]["same_predictions"] == result["tvm_x86"]["of"]
    first, second = result["seeds"]["runs"]
    assert (first["seed"], first["dense"], first["tuned_5bit"]) == (0, error["dense"], error["tuned_5bit"])
    assert second["seed"] == 1 and second["dense"] != first["dense"], result["seeds"]
    assert second["ratio_entropy_coded"] > 30, result["seeds"]


def test_hashednets_small():
    """3,000 images, two epochs: at 1/8 of the weights the hashed net beats the dense net of the same storage."""
    result = load_example("hashednets_mnist").run(ratios=(1 / 8,), epochs=2, subset=3000, verbose=False)
    full, hashed, small = result["rows"]
    assert hashed["stored_values"] == 98_000 + 1_250 + 1_010  # buckets of both weights, and the biases
    assert small["hidden"] == 125 and abs(small["stored_values"] - hashed["stored_values"]) < 0.02 * 100_000
    assert hashed["test_error_percent"] < small["test_error_percent"], result["rows"]
    assert hashed["stored_bytes"] < full["stored_bytes"] / 7
