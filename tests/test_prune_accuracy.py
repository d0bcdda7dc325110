"""The accuracy acceptance of structured pruning: the digits CNN, 50 % of its channels pruned and fine-tuned,
stays within 1 point of the unpruned accuracy (examples/prune_digits.py, run in-process)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

EXAMPLE = Path(__file__).parent.parent / "examples" / "prune_digits.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prune_digits", EXAMPLE)
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
