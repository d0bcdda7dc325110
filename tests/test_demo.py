"""The main job on the bundled default: digits CNN, fold-bn, compile, compare."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fxpress.demo import DigitsCNN, load_digits, run_demo


def test_digits_data_is_bundled_and_split() -> None:
    data = load_digits()
    assert data.x_train.shape[1:] == (1, 8, 8) and data.x_test.shape[1:] == (1, 8, 8)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) <= 1.0


def test_digits_cnn_has_batchnorm() -> None:
    model = DigitsCNN()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.tvm
def test_demo_accuracy_and_equivalence(tmp_path, capsys) -> None:
    result = run_demo(tmp_path / "artifact", num_threads=1)
    (eager_acc, _, _), (compiled_acc, _, _) = result["rows"].values()
    assert eager_acc >= 0.95
    assert compiled_acc == eager_acc
    assert result["max_abs_diff"] <= 1e-4
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    assert manifest["pipeline"] == "fold-bn,fold-constants,dce"
    assert manifest["inputs"][0]["shape"] == [None, 1, 8, 8]  # dynamic batch
    assert [r["pass"] for r in manifest["trace"]] == ["fold-bn", "fold-constants", "dce"]
    assert manifest["trace"][0]["modified"] is True
    out = capsys.readouterr().out
    assert "test accuracy" in out and "fxpress x86 (TVM)" in out
    assert np.isfinite(result["max_abs_diff"])
