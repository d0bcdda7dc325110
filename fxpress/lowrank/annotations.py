"""`LowRankFactor`: the mark ``low-rank`` leaves on every factor weight it made.

Stored under key ``low-rank`` on the factor's ``get_attr`` node: the layer it
came from (its name as the plan and report print it), the method, which stage
of how many, and the rank(s). It is how a second run of ``low-rank``
recognizes a layer it already factorized (and leaves it alone: factorizing
factors again would only lose more), and how the report names those layers.
The verifier calls ``check`` after every pass: the node is a ``get_attr`` of a
float tensor, the stage is within the chain, ranks are positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from fxpress.ir.annotations import Annotation


@dataclass(frozen=True)
class LowRankFactor(Annotation):
    """This weight is stage `stage` of `stages` of layer `layer`'s `method` factorization at rank `rank`."""

    key = "low-rank"
    layer: str
    method: str
    stage: int
    stages: int
    rank: tuple[int, ...]

    def check(self, node: torch.fx.Node) -> str | None:
        val = node.meta.get("val")
        if node.op != "get_attr":
            return f"low-rank mark on a {node.op} node; it belongs on a factor weight's get_attr node"
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            return f"low-rank mark on a value that is not a float weight ({getattr(val, 'shape', val)})"
        if not 1 <= self.stage <= self.stages or not self.rank or min(self.rank) < 1:
            return f"low-rank mark with stage {self.stage}/{self.stages} and rank {self.rank}"
        return None

    def text(self) -> str:
        return f"low-rank {self.layer} {self.method} {self.stage}/{self.stages} r={'x'.join(map(str, self.rank))}"
