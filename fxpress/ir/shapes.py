"""Shape propagation: recompute every node's fake-tensor value.

torch.export leaves a FakeTensor in ``node.meta["val"]`` for each node; passes
that add or rewrite nodes invalidate those. `propagate_shapes` reruns the graph
under the fake mode of the graph's inputs (so symbolic sizes such as a dynamic
batch survive) and refreshes ``val`` everywhere. It is cheap: no real compute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph


def _input_values(graph: Graph) -> tuple[FakeTensorMode, list[torch.Tensor]]:
    placeholders = graph.inputs
    vals = [p.meta.get("val") for p in placeholders]
    mode = detect_fake_mode([v for v in vals if v is not None])
    if mode is not None and all(v is not None for v in vals):
        return mode, vals  # type: ignore[return-value]
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    return mode, [mode.from_tensor(x) for x in graph.example_inputs]


def propagate_shapes(graph: Graph) -> None:
    """Refresh ``meta["val"]`` on every node; raises what the failing op raised."""
    mode, inputs = _input_values(graph)
    for node in graph.nodes():
        if node.op != "placeholder":
            node.meta.pop("val", None)
    with mode:
        FakeTensorProp(graph.gm, mode).propagate_dont_convert_inputs(*inputs)
