"""Issue 18 item 2: pruning, sparsity and int8 in one pipeline text, compiled with every gain kept.

One text takes a small conv net with an MLP head through ``fold-bn``,
``prune-channels``, ``sparsify`` (16x1 blocks on the head's hidden linears),
``observe``, ``calibrate`` (fed the batches, as the CLI's ``--calibration``
does) and ``fold-qdq``, then compiles it. Checked: the passes ran in the
order written, the pruned graph is smaller, the compiled module equals the
eager int8 graph bit for bit, and the int8 block-sparse kernel is the one
that runs (the manifest's decisions, the function in the generated code,
``vpdpbusd`` in its assembly). The same text without ``sparsify`` compiles
without any block-sparse layer.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.passes import Calibrate
from fxpress.passes.registry import parse_pipeline
from tests.conftest import runnable_preset

pytestmark = pytest.mark.tvm

TEXT = (
    "fold-bn,prune-channels{ratio=0.5},sparsify{density=0.1,pattern=16x1,layers=fc1|fc2},"
    "observe{per-channel=true},calibrate,fold-qdq"
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64)
        self.fc1, self.fc2, self.head = nn.Linear(64 * 16, 256), nn.Linear(256, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _pipeline(text: str, batches: list[tuple[torch.Tensor]]) -> list:
    return [dataclasses.replace(p, data=batches) if isinstance(p, Calibrate) else p for p in parse_pipeline(text)]


@pytest.fixture(scope="module")
def setting() -> tuple[fxpress.Graph, list[tuple[torch.Tensor]]]:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so fold-bn and the pruning ranks matter
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    batches = [(torch.randn(8, 3, 8, 8),) for _ in range(3)]
    return fxpress.capture(model, batches[0]), batches


def test_prune_sparsify_int8_compile_in_one_text(setting):
    graph, batches = setting
    result = fxpress.optimize(graph, _pipeline(TEXT, batches))
    ran = [r.pipeline.split("{")[0] for r in result.trace]
    assert ran == ["fold-bn", "prune-channels", "sparsify", "observe", "calibrate", "fold-qdq"]
    weights = {str(n.target): result.param(n) for n in result.nodes("get_attr")}
    assert weights["fc1_weight_i8"].shape == (128, 64 * 16 // 2) and weights["fc2_weight_i8"].shape == (64, 128)
    compiled = fxpress.compile(result, target=runnable_preset("x86-vnni"))
    decisions = compiled.manifest["block_sparse"]
    assert [(d["int8"], d["sparse"], d["kernel"]) for d in decisions] == [
        (True, True, "fx_vnni_sparse_vpdpbusd_16x4")
    ] * 2
    asm = compiled.executable.mod.imports[0].inspect_source("asm")
    assert "block_sparse_quantized_linear" in asm and "vpdpbusd" in asm
    for seed in range(2):
        x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
        assert np.array_equal(compiled(x.numpy()), result(x).detach().numpy())
    assert compiled.manifest["pipeline"] == result.pipeline


def test_without_sparsify_no_layer_is_block_sparse(setting):
    graph, batches = setting
    result = fxpress.optimize(
        graph, _pipeline(TEXT.replace("sparsify{density=0.1,pattern=16x1,layers=fc1|fc2},", ""), batches)
    )
    compiled = fxpress.compile(result, target="x86")
    assert compiled.manifest.get("block_sparse", []) == []
    x = batches[0][0]
    assert np.array_equal(compiled(x.numpy()), result(x).detach().numpy())
