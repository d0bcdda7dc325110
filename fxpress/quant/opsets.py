"""Which ops int8 quantization treats how: the roots it quantizes and the ops its ranges pass through.

- `QUANTIZABLE`: the roots, op overload -> kind (``linear``, ``conv2d``,
  ``matmul``, ``bmm``, ``add``, ``cat``): ``observe`` puts observers on their
  operands and output, ``observe{ops=[...]}`` names kinds, and quant-report
  has one row per root;
- `OWN_RANGE`: ops after an observed value that get an observer of their own
  (a ReLU's range is [0, max], not its input's);
- `SHARED_PARAMS`: ops whose outputs are some of their input's values
  (reshapes, permutes, slices, max-pool), so the input's parameters hold
  exactly; ``observe`` gives them a shared slot and ``fold-qdq`` moves
  quantizes across them.

Defined here, below the passes, because the ``observe`` and ``fold-qdq``
passes and the quant-report above them must agree on them.
"""

from __future__ import annotations

from typing import Any

import torch

aten = torch.ops.aten

QUANTIZABLE: dict[Any, str] = {
    aten.linear.default: "linear",
    aten.conv2d.default: "conv2d",
    aten.conv2d.padding: "conv2d",
    aten.matmul.default: "matmul",
    aten.bmm.default: "bmm",
    aten.add.Tensor: "add",
    aten.add_.Tensor: "add",
    aten.cat.default: "cat",
}
OWN_RANGE: frozenset[Any] = frozenset({aten.relu.default, aten.relu_.default})
SHARED_PARAMS: frozenset[Any] = frozenset(
    {
        aten.max_pool2d.default,
        aten.reshape.default,
        aten.view.default,
        aten.flatten.using_ints,
        aten.permute.default,
        aten.transpose.int,
        aten.t.default,
        aten.contiguous.default,
        aten.squeeze.dim,
        aten.unsqueeze.default,
        aten.slice.Tensor,
    }
)
