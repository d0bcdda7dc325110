"""The main job on the bundled default: digits CNN, compressed (pruned, fine-tuned, weights shared), compiled.

`run_demo` is checked for what it claims, not for times: the compressed artifact stores fewer weight bytes
than the eager model's fp32 tensors, its accuracy is within 0.5 points of eager fp32, it predicts what its
graph predicts in PyTorch, the uncompressed build matches eager within 1e-4, and the manifest records the
pipeline. The latencies are printed, never asserted (2 shared cores make them noisy).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fxpress.demo import DigitsCNN, Row, compression_passes, load_digits, run_demo


def test_digits_data_is_bundled_and_split() -> None:
    data = load_digits()
    assert data.x_train.shape[1:] == (1, 8, 8) and data.x_test.shape[1:] == (1, 8, 8)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) <= 1.0


def test_digits_cnn_has_batchnorm() -> None:
    model = DigitsCNN()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_the_compression_pipeline_is_deep_compressions_recipe() -> None:
    names = [p.name for p in compression_passes(load_digits())]
    assert names == ["fold-bn", "prune-channels", "fine-tune", "share-weights", "fine-tune"]


@pytest.mark.tvm
def test_demo_compresses_at_equal_accuracy(tmp_path, capsys) -> None:
    result = run_demo(tmp_path / "artifact", num_threads=1)
    rows: dict[str, Row] = result["rows"]
    eager, fp32, compressed = rows["eager PyTorch fp32"], rows["fxpress fp32 (TVM)"], rows["fxpress compressed"]
    assert eager.accuracy >= 0.95
    assert fp32.accuracy == eager.accuracy and result["max_abs_diff"] <= 1e-4
    assert abs(compressed.accuracy - eager.accuracy) <= 0.005  # within 0.5 points
    assert result["compressed_agrees_with_its_graph"] == 1.0
    assert compressed.weight_bytes * 5 < eager.weight_bytes  # measured 12x; a quarter of it is plenty of margin
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [None, 1, 8, 8]  # dynamic batch
    assert [r["pass"] for r in manifest["trace"]] == [
        "fold-bn",
        "prune-channels{ratio=0.25,importance=taylor}",
        "fine-tune{epochs=12,lr=0.003,schedule=cosine}",
        "share-weights{bits=4}",
        "fine-tune{epochs=4,schedule=cosine}",
    ]
    assert all(r["modified"] for r in manifest["trace"])
    assert manifest["storage"]["forms"]["codebook"] >= 3  # the shared conv and linear weights
    assert manifest["storage"]["stored_bytes"] == compressed.weight_bytes
    assert result["fp32_pipeline"] == "fold-bn,fold-constants,dce"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # the fp32 comparison build is not kept
    out = capsys.readouterr().out
    assert "test accuracy" in out and "fxpress compressed" in out and "x smaller" in out
    assert all(np.isfinite([r.ms_one, r.ms_all]).all() for r in rows.values())
