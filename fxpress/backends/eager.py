"""The eager backend: run the graph in PyTorch. It is the reference oracle.

`compile(graph, target="eager")` returns an `EagerModule` with the same call
convention as a TVM `CompiledModule` (numpy in, numpy out; torch in, torch
out), so tests and benchmarks can swap one for the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fxpress.errors import InputError
from fxpress.ir.graph import Graph


class EagerModule:
    """Runs a copy of the graph's module under ``torch.no_grad``."""

    target = "eager"

    def __init__(self, graph: Graph) -> None:
        self.graph = graph.copy()

    def __call__(self, *inputs: Any) -> Any:
        expected = len(self.graph.inputs)
        if len(inputs) != expected:
            raise InputError(f"expected {expected} input(s) ({', '.join(self.graph.input_names)}), got {len(inputs)}")
        as_numpy = bool(inputs) and isinstance(inputs[0], np.ndarray)
        tensors = [torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in inputs]
        out = self.graph(*tensors)
        if not as_numpy:
            return out
        if isinstance(out, tuple | list):
            return tuple(o.numpy() for o in out)
        return out.numpy()
