"""low-rank: replace linears and convs by chains of smaller dense layers (truncated SVD, Tucker-2, spatial).

    linear(x, W[out,in], b)           -> linear(linear(x, A[r,in]), B[out,r], b)         # W ~ B A, svd
    conv(x, W[O,I,k,k], b)            -> conv1x1(conv_kxk(conv1x1(x, U_in^T), C), U_out, b)  # tucker2
    conv(x, W[O,I,k,k], b)            -> conv_1xk(conv_kx1(x, V[r,I,k,1]), H[O,r,1,k], b)    # spatial

Every layer the request selects (`fxpress.lowrank.plan`: ``layers``,
``skip``) gets a rank from ``ranks`` (``ranks=[fc1=32,conv=16x32]``; NAME is a
regex over the layer's module path, op name and weight path), else from
``energy`` (the fraction of the squared singular values kept), else from
``ratio`` (the factors hold at most that fraction of the layer's weights and,
for convs, multiply-adds; 0.5 when nothing is given), rounded to
``rank-multiple`` (default 16: ranks that fill the fp32 kernels' 16-lane
panels); ``method`` (tucker2, spatial, svd) says how kxk convs split; linears
and 1x1 convs take the SVD, *data-aware* when calibration batches are given
in Python (``LowRank(ratio=0.5, data=batches)``: the SVD of ``W C^(1/2)``, C
the second moment of the layer's inputs, which minimizes the output error on
that data rather than the weight error). The factors are ordinary ``aten.linear`` /
``aten.conv2d`` ops with new frozen parameters (marked `LowRankFactor`), so
every backend runs them as dense kernels, and later passes (``observe``,
``fold-qdq``, ``fine-tune``) treat them like any layer. ``fxpress
low-rank-report`` prints the plan and the error of each choice first.

Requires: nothing (run ``fold-bn`` first, so that convs carry their batch norm
into the factors). Establishes: ``low-rank``; invalidates ``observed`` and
``calibrated`` (new weights: observe and calibrate afterwards) and, when it
factorizes a layer, removes every observer slot and quantization parameter
they stand for (a slot shared with a replaced layer's output would point at
an unobserved factor; ``stats["unobserved"]``); forbids
``quantized`` and ``fake-quantized`` (it factorizes float weights: run it before
quantization).
Numerics: each factorized layer computes the original layer with its weight
replaced by the truncated one; the relative weight error is the dropped part
of the spectrum (svd, spatial: exactly ``sqrt(sum of dropped s_i^2) / ||s||``;
tucker2: ``sqrt(1 - ||C||^2 / ||W||^2)``), full rank reproduces the layer to
float rounding. A sparsity annotation on a replaced weight goes with it (the
factors are dense). Bad input, each a `LowRankError`: a rank of 0 or above the
layer's bound (``min(out, in)``; tucker2 ``in x out`` channels), a ``ranks`` or
``layers`` name that matches no layer (the message lists near names), energy
outside (0, 1], ratio outside (0, 1), both given, an unknown method.
Leaves alone: grouped and depthwise convs, transposed, 1-D and 3-D convs,
computed or shared weights, layers a ratio cannot shrink, layers whose factors
would not hold fewer weights and multiply-adds, and the factors of an earlier
run (so a second run changes nothing). Sits after ``fold-bn`` and
``prune-channels``; before ``fine-tune`` / ``distil`` (to recover accuracy) and
quantization.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fxpress.ir.graph import Graph
from fxpress.ir.properties import QUANTIZED_WEIGHTS, WEIGHT_DEPENDENT, Property
from fxpress.lowrank.plan import LowRankRequest, plan_low_rank
from fxpress.lowrank.rewrite import apply_plan
from fxpress.passes.base import AnalysisManager, Pass, PassResult, print_pass
from fxpress.quant.annotations import drop_quant_annotations


@dataclass(frozen=True)
class LowRank(LowRankRequest, Pass):
    """Factorize linears and convs into chains of smaller dense layers (see the module docstring).

    The pass is the `LowRankRequest` it applies: its options are the request's
    fields, checked by the request, and the low-rank report plans with the same.
    """

    name = "low-rank"
    establishes = frozenset({Property.LOW_RANK})
    invalidates = WEIGHT_DEPENDENT
    forbids = QUANTIZED_WEIGHTS

    def text(self) -> str:
        return print_pass(dataclasses.replace(self, data=None))  # data is not pipeline text

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        plan = plan_low_rank(graph, self)
        done = [row for row in plan if row.factorized]
        replaced = apply_plan(graph, done)
        stats = {
            "factorized": replaced,
            "weights_before": sum(row.weights[0] for row in done),
            "weights_after": sum(row.weights[1] for row in done),
            "left_alone": sum(1 for row in plan if not row.factorized),
        }
        if replaced:  # 'observed' and 'calibrated' go, and the slots and parameters they stand for with them
            unobserved = drop_quant_annotations(graph.nodes())
            if unobserved:
                stats["unobserved"] = unobserved
        return PassResult(graph, modified=replaced > 0, stats=stats)
