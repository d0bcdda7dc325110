"""The accuracy acceptances of pruning: the digits CNN, 50 % of its channels pruned and fine-tuned, stays within
1 point of the unpruned accuracy (examples/prune_digits.py, run in-process); LeNet-300-100 on the real MNIST,
magnitude-pruned to 8 % of its weights and retrained, within 0.3 points of dense (examples/prune_mnist_mlp.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLE = Path(__file__).parent.parent / "examples" / "prune_digits.py"


def _example() -> ModuleType:
    return _load(EXAMPLE)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_pruned_half_and_fine_tuned_within_one_point():
    result = _example().run(ratio=0.5, verbose=False)
    (dense_acc, dense_params), (pruned_acc, pruned_params), (tuned_acc, tuned_params) = result["rows"].values()
    assert dense_acc > 0.97  # a real model to begin with
    assert pruned_acc < dense_acc - 0.1  # pruning alone hurts: the fine-tuning does the recovery
    assert tuned_acc >= dense_acc - 0.01
    assert pruned_params == tuned_params < 0.3 * dense_params  # half the channels: ~1/4 of the weights
    dense, tuned = result["dense"], result["tuned"]
    assert tuned.param("features_0_weight_bnfold").shape == (8, 1, 3, 3)
    assert tuned.param("classifier.1.weight").shape == (32, 256)
    assert tuned.pipeline == "fold-bn,prune-channels{importance=taylor}"
    x = torch.rand(3, 1, 8, 8)
    assert dense(x).shape == tuned(x).shape == (3, 10)


MNIST_EXAMPLE = Path(__file__).parent.parent / "examples" / "prune_mnist_mlp.py"


def _mnist_data_present() -> bool:
    from fxpress.data import mnist

    return mnist.available("train") and mnist.available("test")


@pytest.mark.slow
@pytest.mark.tvm
@pytest.mark.skipif(
    not _mnist_data_present(),
    reason="the MNIST IDX files are not on disk; fetch them with: python -m fxpress.data.mnist fetch (or: make data)",
)
def test_mnist_mlp_pruned_to_8_percent_and_retrained_within_0_3_points():
    """examples/prune_mnist_mlp.py's `run` with the example's schedule (20 dense epochs, 16 retraining epochs
    ramping to 8 % over 8, global magnitude) on a 20,000-image training subset instead of 60,000, to keep the
    test near a minute; evaluated on all 10,000 test images. Its own dense model is weaker than the full one
    (~97 % instead of ~98.4 %), and the bound is the acceptance's: retrained within 0.3 points of that dense
    model, overall weight density <= 8 %. The full run (bench/mnist_mlp_prune.json) meets it on 60,000."""
    result = _load(MNIST_EXAMPLE).run(subset=20_000, threads=1, verbose=False)
    acc = result["accuracy"]
    assert result["settings"]["train_images"] == 20_000 and result["settings"]["evaluated_on"] == "10000 test images"
    assert acc["dense"] > 0.96  # a real model to begin with
    assert acc["one_shot_pruned"] < acc["dense"] - 0.05  # pruning alone hurts: the retraining does the recovery
    assert acc["pruned_retrained"] >= acc["dense"] - 0.003
    dense, tuned = result["dense"], result["tuned"]
    weights = {name: tuned.param(name) for name in ("1.weight", "3.weight", "5.weight")}
    nonzero, size = sum(int((w != 0).sum()) for w in weights.values()), sum(w.numel() for w in weights.values())
    assert size == 784 * 300 + 300 * 100 + 100 * 10
    assert nonzero / size <= 0.08 + 1e-5  # measured in the final graph, not taken from the pass
    assert all(0 < int((w != 0).sum()) < w.numel() for w in weights.values())  # every layer pruned, none emptied
    assert all(bool((tuned.param(f"{i}.bias") != 0).all()) for i in (1, 3, 5))  # biases stay dense
    assert all(float((dense.param(name) != 0).double().mean()) > 0.99 for name in weights)  # dense graph untouched
    assert result["layers"]["overall"] == {"nonzero": nonzero, "size": size, "density": round(nonzero / size, 6)}
    assert result["tvm_matches_eager"] == {"same": 10_000, "of": 10_000}
