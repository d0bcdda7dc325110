"""`qat`: quantization-aware training of a calibrated graph (fake-quantize, train, freeze).

    observed = fxpress.optimize(graph, [Observe(per_channel=True, weight_bits=4), Calibrate(data=batches)])
    trained = qat(observed, train_batches, epochs=2, lr=1e-4)        # still calibrated, parameters trained
    int8 = fxpress.optimize(trained, [FoldQDQ()])                   # the same int8 ops as post-training

Returns a new `Graph` (the given one is never changed): a copy of `graph`
with every observed value wrapped in ``fxpress.fake_quantize``
(`fxpress.quant.qat_graph.insert_fake_quant`), trained with
`fxpress.train.fine_tune` on ``loss(graph(*inputs), target)`` (straight-through
gradients through the rounding; sparsity masks stay fixed, as in fine-tune),
then frozen back (`freeze_fake_quant`): its float weights moved, and each
value's `QuantParams` hold the scale and zero point that training used.

With ``learn=True`` (LSQ, Esser et al. 2020) the scales of weights and
activations, and the zero points of affine activations, train with the
weights; with ``learn=False`` they stay as calibration (and observe, for
weights) chose them, and only the weights adapt to the fixed grid. Lower
weight bit widths come from observe (``weight-bits=4``): the integer range
travels in each scheme, so this trainer needs no bit-width option.

For a loss that needs a teacher (distillation with a quantized student), run
the three steps apart: ``fake-quantize``, then ``distil`` (or ``fine-tune``),
then ``freeze-fake-quant``.

Bad input: a graph without observers or without calibration (clear errors
naming the pass to run), and every bad input fine-tune refuses (data, epochs,
lr, optimizer, schedule, non-finite loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from fxpress.ir.graph import Graph
from fxpress.ir.properties import Property
from fxpress.quant.qat_graph import freeze_fake_quant, insert_fake_quant
from fxpress.train.fine_tune import Loss, OptimizerFactory, fine_tune


def qat(
    graph: Graph,
    data: Iterable[Sequence[torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    loss: Loss = F.cross_entropy,
    learn: bool = True,
    optimizer: str | OptimizerFactory = "adam",
    schedule: str = "constant",
    weight_decay: float = 0.0,
    progress: bool = True,
    history: list[float] | None = None,
) -> Graph:
    """Train a fake-quantized copy of `graph` and freeze it (see the module docstring)."""
    prepared = graph.copy()
    insert_fake_quant(prepared, learn=learn)
    trained = fine_tune(
        prepared,
        data,
        epochs=epochs,
        lr=lr,
        loss=loss,
        optimizer=optimizer,
        schedule=schedule,
        weight_decay=weight_decay,
        progress=progress,
        history=history,
    )
    freeze_fake_quant(trained)
    trained.properties = (trained.properties - {Property.FAKE_QUANTIZED}) | {
        Property.OBSERVED,
        Property.CALIBRATED,
        Property.QAT_TRAINED,
    }
    return trained
