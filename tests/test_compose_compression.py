"""Issue 17, item 5: pruning, low-rank, sparsity, weight sharing, distillation and int8 in one pipeline.

One graph goes through every weight-changing method in the order the
contracts allow (prune channels, factorize, sparsify, share, distil against
the unpruned model, then observe / calibrate / fold-qdq) and is compiled.
Checked: each method's mark survives the later ones (the verifier would fail
otherwise: shared weights keep their codebook through distillation, pruned
zeros stay zero), the compiled int8 module equals the eager int8 graph bit for
bit, the artifact stores the shared int8 weights as codebooks, and the
student is still close to its teacher. The order the contracts refuse is
refused before anything runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import PipelineError
from fxpress.ir import annotations as notes
from fxpress.passes import Calibrate, Distil, FoldQDQ, Observe
from fxpress.reports.size import weight_sizes
from fxpress.sharing import SharedWeights


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def setting() -> tuple[fxpress.Graph, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    x = torch.randn(32, 64)
    dense = fxpress.capture(Mlp().eval(), (x,))
    batches = [(torch.randn(32, 64), torch.zeros(32, dtype=torch.long)) for _ in range(8)]
    return dense, batches


def test_every_method_in_one_pipeline_compiles_bit_exact_and_stores_codebooks(setting, tmp_path):
    dense, batches = setting
    inputs = [(b[0],) for b in batches]
    compressed = fxpress.optimize(
        dense,
        [
            "prune-channels{ratio=0.25}",
            "low-rank{ratio=0.6,rank-multiple=8,skip=[fc3]}",
            "sparsify{density=0.5}",
            "share-weights{bits=4}",
        ],
    )
    distilled = fxpress.optimize(compressed, [Distil(teacher=dense, data=batches, epochs=3, lr=1e-3, alpha=1.0)])
    graph = fxpress.optimize(distilled, [Observe(per_channel=False), Calibrate(data=inputs), FoldQDQ()])
    ran = [r.pipeline.split("{")[0] for r in graph.trace]
    assert ran == [
        "prune-channels",
        "low-rank",
        "sparsify",
        "share-weights",
        "distil",
        "observe",
        "calibrate",
        "fold-qdq",
    ]
    x = batches[0][0]
    eager = graph(x).detach().numpy()
    compiled = fxpress.compile(graph, target="x86")
    assert np.array_equal(compiled(x.numpy()), eager)
    teacher = torch.cat([dense(b[0]).detach() for b in batches])

    def cosine(g: fxpress.Graph) -> float:
        out = torch.cat([g(b[0]).detach() for b in batches])
        return float(torch.nn.functional.cosine_similarity(out, teacher).mean())

    assert cosine(distilled) > cosine(compressed) + 0.05  # distillation pulled the student back to its teacher
    compiled.save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["storage"]["forms"]["codebook"] >= 1
    # int8 weights of 16 centroids and zero: 5-bit indices instead of bytes (biases and scales stay)
    assert manifest["storage"]["stored_bytes"] < 0.7 * manifest["storage"]["dense_bytes"]
    assert np.array_equal(fxpress.load(tmp_path / "a")(x.numpy()), eager)


def test_sharing_survives_distillation_and_sizes_show_it(setting):
    dense, batches = setting
    graph = fxpress.optimize(
        dense, ["sparsify{density=0.3}", "share-weights{bits=3}", Distil(teacher=dense, data=batches, epochs=1)]
    )
    shared = [n for n in graph.nodes("get_attr") if isinstance(notes.get(n, SharedWeights.key), SharedWeights)]
    assert len(shared) == 3
    for node in shared:
        weight = graph.param(node)
        assert torch.unique(weight[weight != 0]).numel() <= 8
        assert float((weight != 0).float().mean()) <= 0.31  # the pruned zeros stayed zero (density rounds up)
    sizes = weight_sizes(graph)
    assert sizes.ratios()["stored"] > 5 and sizes.entropy_bytes <= sizes.stored_bytes


@pytest.mark.parametrize(
    "text, match",
    [
        ("observe,calibrate,fold-qdq,share-weights", r"share-weights cannot run on a graph that is \['quantized'\]"),
        ("observe,calibrate,fake-quantize,low-rank", r"low-rank cannot run on a graph that is \['fake-quantized'\]"),
        ("share-weights,observe,low-rank,calibrate", r"calibrate requires \['observed'\].*invalidated by low-rank"),
    ],
)
def test_orders_the_contracts_refuse(setting, text, match):
    dense, _ = setting
    with pytest.raises(PipelineError, match=match):
        fxpress.optimize(dense, text)
