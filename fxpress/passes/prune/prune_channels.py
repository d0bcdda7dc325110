"""prune-channels: structured pruning that leaves a smaller dense graph.

    conv(x, W[16,8,3,3]) -> bn -> relu -> conv(., V[32,16,3,3])
      -> conv(x, W[8,8,3,3]) -> bn[8] -> relu -> conv(., V[32,8,3,3])   (ratio=0.5)

The ``channel-groups`` analysis finds every set of coupled channels (residual
adds, concatenations, depthwise and grouped convs, flatten -> linear, attention
heads, FFN hidden sizes; see `fxpress.passes.prune.groups`); `plan_pruning`
picks the least important units of each group (or of all groups, with
``per-layer=false``), rounding the kept channels up to a multiple of
``round-to``; `apply_plan` slices every member parameter and rewrites the shape
constants of views, slices, splits, grouped convs and norms. Options: ratio
(the fraction removed, in [0, 1)), per-layer, round-to, importance (l1, l2,
bn-scale, taylor), protected (op node names or module paths whose output
channels stay). ``taylor`` ranks by loss gradients and needs the Python-only
options ``data`` (``(inputs..., target)`` tuples) and ``loss`` (default
cross-entropy): ``PruneChannels(importance="taylor", data=batches)``; without
data it is an error that says so.

cast-bf16's ``fxpress.bf16_linear`` / ``bf16_conv2d`` prune as the ATen
linear and conv they compute (in bfloat16): prune before or after the cast.

Requires: nothing (run ``fold-bn`` first to prune folded convs). Establishes:
``channels-pruned``; invalidates ``observed`` and ``calibrated`` (weights are
sliced: observe and calibrate afterwards) and, when it prunes, removes the
observer slots and quantization parameters those properties stand for
(per-channel parameters of the old channel count would be wrong); forbids
``quantized`` and ``fake-quantized`` (run it before quantization). The
annotations of a sliced weight stay true: its sparsity is measured again (its
pattern where that still holds, else unstructured), and hash sharing, which
slicing breaks (the hash is over positions), is dropped with a warning
(``stats["unshared"]``): that weight is stored dense; k-means sharing survives. Numerics: exact for every group
the analysis marks exact: the pruned graph computes what the original computes
with the pruned channels' parameters set to zero; a group normalized over its
channels (layer_norm, softmax, mean) is approximate and says so in the report.
Leaves alone: frozen groups (graph outputs, ops the analysis does not
understand, inputs' channels), protected layers, a ratio of 0, and a graph
already pruned at this ratio (ratios are relative to the unpruned model).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fxpress.ir.graph import Graph
from fxpress.ir.properties import QUANTIZED_WEIGHTS, WEIGHT_DEPENDENT, Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult, print_pass
from fxpress.passes.prune.errors import PruneError
from fxpress.passes.prune.groups import ChannelGroupsAnalysis
from fxpress.passes.prune.importance import TAYLOR_HOW, Loss
from fxpress.passes.prune.plan import check_options, plan_pruning
from fxpress.passes.prune.rewrite import apply_plan


@dataclass(frozen=True)
class PruneChannels(Pass):
    """Remove the least important channels of every prunable group (see module doc)."""

    name = "prune-channels"
    establishes = frozenset({Property.CHANNELS_PRUNED})
    invalidates = WEIGHT_DEPENDENT
    forbids = QUANTIZED_WEIGHTS

    ratio: float = 0.5
    per_layer: bool = True
    round_to: int = 1
    importance: str = "l1"
    protected: tuple[str, ...] = ()
    data: Iterable[Any] | None = field(default=None, compare=False, repr=False)
    loss: Loss | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_options(self.ratio, self.round_to, self.importance)
        if self.importance == "taylor" and (self.data is None or isinstance(self.data, str | bytes)):
            raise PruneError(f"importance 'taylor' needs data, and pipeline text cannot carry it; {TAYLOR_HOW}")
        if self.loss is not None and not callable(self.loss):
            raise PruneError(f"loss must be a Python callable loss(output, target), got {self.loss!r}")

    def text(self) -> str:
        shadow = copy.copy(self)  # not dataclasses.replace: taylor without data does not construct
        object.__setattr__(shadow, "data", None)  # data and loss are not pipeline text
        object.__setattr__(shadow, "loss", None)
        return print_pass(shadow)

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        groups = am.get(ChannelGroupsAnalysis)
        plan = plan_pruning(
            graph,
            groups,
            self.ratio,
            per_layer=self.per_layer,
            round_to=self.round_to,
            importance_kind=self.importance,
            protected=self.protected,
            data=self.data,
            loss=self.loss,
        )
        if plan.empty:
            return PassResult(graph, modified=False, stats={"groups": 0, "units": 0, "params": 0, "ops": 0})
        return PassResult(graph, modified=True, stats=apply_plan(graph, groups, plan))
