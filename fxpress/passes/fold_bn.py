"""fold-bn: fold eval-mode BatchNorm into the convolution or linear before it.

    bn(conv(x, W, b)) -> conv(x, W * s, (b - mean) * s + beta),  s = gamma / sqrt(var + eps)

Matches ``aten.batch_norm`` (and ``_native_batch_norm_legit_no_training``) in
inference mode whose input is an ``aten.conv1d/2d/3d``, a non-transposed
``aten.convolution`` or a rank-2 ``aten.linear`` (BatchNorm1d after a linear)
with constant weights and no other user. The folded weights are computed in
float64 and stored as new parameters; the original ones are dropped.

Requires: nothing. Establishes: ``bn-folded``; invalidates ``observed`` and
``calibrated`` (the folded weights are new parameters without observer slots,
and a folded conv's output range is the BN's: run observe after fold-bn, as
`check_order` tells a pipeline that does not). Numerics: exact up to float32
rounding of the folded weights (tests hold it to 1e-5 of eager). Leaves alone:
BN in training mode, BN after any other op, a conv whose output has other users.
Runs first in most pipelines, before quantization observes the weights.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx

from fxpress.ir.graph import Graph
from fxpress.ir.opsets import BATCH_NORM, CONV, is_transposed_conv, packet
from fxpress.ir.properties import WEIGHT_DEPENDENT, Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult

aten = torch.ops.aten


def _const(graph: Graph, a: object) -> torch.Tensor | None:
    return graph.param(a) if isinstance(a, torch.fx.Node) and a.op == "get_attr" else None


def _bn_parts(graph: Graph, bn: torch.fx.Node) -> tuple[torch.fx.Node, list[torch.Tensor | None], float] | None:
    """(input, [gamma, beta, mean, var], eps) of an inference-mode BN, else None."""
    if bn.target == aten.batch_norm.default:
        x, w, b, mean, var, training, _momentum, eps = bn.args[:8]
    elif bn.target == aten._native_batch_norm_legit_no_training.default:
        x, w, b, mean, var, _momentum, eps = bn.args[:7]
        training = any(u.target is not operator.getitem or u.args[1] != 0 for u in bn.users)
    else:  # _native_batch_norm_legit: batch statistics, a training-mode op
        return None
    if training or not isinstance(x, torch.fx.Node) or not isinstance(eps, float | int):
        return None
    tensors = [_const(graph, a) if a is not None else None for a in (w, b, mean, var)]
    if (
        tensors[2] is None
        or tensors[3] is None
        or (w is not None and tensors[0] is None)
        or (b is not None and tensors[1] is None)
    ):
        return None
    return x, tensors, float(eps)


def _producer_ok(graph: Graph, x: object) -> bool:
    if not isinstance(x, torch.fx.Node) or x.op != "call_function" or len(x.users) != 1:
        return False
    if packet(x) not in CONV | {aten.linear} or is_transposed_conv(x):
        return False
    if x.target == aten.linear.default and x.meta["val"].dim() != 2:
        return False
    bias = x.args[2] if len(x.args) > 2 else None
    return _const(graph, x.args[1]) is not None and (bias is None or _const(graph, bias) is not None)


@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold inference BatchNorm into the preceding conv / linear (see module doc)."""

    name = "fold-bn"
    establishes = frozenset({Property.BN_FOLDED})
    invalidates = WEIGHT_DEPENDENT

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        folded = 0
        for bn in [n for n in graph.nodes("call_function") if packet(n) in BATCH_NORM]:
            parts = _bn_parts(graph, bn)
            if parts is None or not _producer_ok(graph, parts[0]):
                continue
            self._fold(graph, bn, *parts)
            folded += 1
        if folded:
            graph.drop_unused_params()
        return PassResult(graph, modified=folded > 0, stats={"folded": folded})

    def _fold(
        self, graph: Graph, bn: torch.fx.Node, op: torch.fx.Node, t: list[torch.Tensor | None], eps: float
    ) -> None:
        weight_node, bias_node = op.args[1], op.args[2] if len(op.args) > 2 else None
        assert isinstance(weight_node, torch.fx.Node) and (bias_node is None or isinstance(bias_node, torch.fx.Node))
        weight = graph.param(weight_node)
        dtype = weight.dtype
        gamma, beta, mean, var = (v.double() if v is not None else None for v in t)
        assert mean is not None and var is not None
        scale = (gamma if gamma is not None else torch.ones_like(var)) / torch.sqrt(var + eps)
        bias = graph.param(bias_node).double() if bias_node is not None else torch.zeros_like(mean)
        new_w = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        new_b = (bias - mean) * scale + (beta if beta is not None else 0.0)
        args = list(op.args) + [None] * (3 - len(op.args))
        weight_path = str(weight_node.target)
        args[1] = graph.add_param(f"{weight_path}_bnfold", new_w.to(dtype), before=op)
        args[2] = graph.add_param(f"{weight_path.rsplit('.', 1)[0]}.bias_bnfold", new_b.to(dtype), before=op)
        op.args = tuple(args)
        if bn.target == aten.batch_norm.default:
            bn.replace_all_uses_with(op)
        else:  # the legit op returns (out, save_mean, save_invstd): only [0] may be used
            for user in list(bn.users):
                if user.target is operator.getitem and user.args[1] == 0:
                    user.replace_all_uses_with(op)
                    graph.fx.erase_node(user)
        if not bn.users:
            graph.fx.erase_node(bn)
