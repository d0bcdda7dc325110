"""Op families and node facts the passes and reports share, each defined once.

The sets hold ATen overload *packets* (``aten.conv2d``, not
``aten.conv2d.default``): a pass that accepts only some overloads says so where
it decides, next to the reason. Compare with `packet(node)`::

    packet(node) in CONV          # conv1d/2d/3d or aten.convolution (which may be transposed)
    is_transposed_conv(node)      # conv_transpose*, or aten.convolution with transposed=True

`bind` reads a call's arguments by schema name, defaults filled in, and
`module_path` names the ``nn.Module`` an op came from (``layer1.0.conv1``), as
``observe{skip=[...]}`` and the reports match it.

This module sits in the IR layer so that quant, sparse, the passes and the
reports read the same definitions (four conv sets and three batch-norm sets
had drifted apart before).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

aten = torch.ops.aten

CONV: frozenset[Any] = frozenset({aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution})
"""Convolutions whose weight is ``[out, in / groups, *kernel]``; ``aten.convolution`` only when not transposed."""
CONV_TRANSPOSE: frozenset[Any] = frozenset({aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d})
"""Transposed convolutions (weight ``[in, out / groups, *kernel]``)."""
BATCH_NORM: frozenset[Any] = frozenset(
    {aten.batch_norm, aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit}
)
"""Batch norm as export leaves it: ``batch_norm``, and the ``_native_batch_norm_legit`` forms (``_no_training``: eval)."""
MATMUL: frozenset[Any] = frozenset({aten.matmul, aten.bmm, aten.mm})
"""Products of two activations (or an activation and a matrix) without a bias."""


def packet(node_or_target: Any) -> Any:
    """The overload packet of a node's target (or of a target); None for non-ATen calls."""
    target = node_or_target.target if isinstance(node_or_target, torch.fx.Node) else node_or_target
    return getattr(target, "overloadpacket", None)


def bind(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The op's arguments by schema name, defaults filled in."""
    out: dict[str, Any] = {}
    for i, arg in enumerate(target._schema.arguments):
        if i < len(args) and not arg.kwarg_only:
            out[arg.name] = args[i]
        elif arg.name in kwargs:
            out[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def is_transposed_conv(node: torch.fx.Node) -> bool:
    """A transposed convolution: a ``conv_transpose*`` op, or ``aten.convolution`` with ``transposed=True``."""
    p = packet(node)
    if p in CONV_TRANSPOSE:
        return True
    return p is aten.convolution and bool(bind(node.target, node.args, node.kwargs).get("transposed"))


def module_path(node: torch.fx.Node) -> str:
    """The path of the innermost ``nn.Module`` the node was traced in (``layer1.0.conv1``); "" at the top."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""
