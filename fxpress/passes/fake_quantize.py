"""fake-quantize: wrap every observed value in a trainable fake-quantize op, for quantization-aware training.

    %y = aten.linear(%x, %w, %b)   # x, w, y calibrated; another linear reads y
      -> %y = aten.linear(fake_quantize(%x, ..), fake_quantize(%w, ..), %b)
         %yf = fake_quantize(%y, %y_scale, %y_zp, qmin, qmax, axis, lsq_factor)

The first of QAT's three steps (torch.ao calls them prepare_qat, train,
convert): ``fake-quantize``, then any trainer (``fine-tune``, ``distil``),
then ``freeze-fake-quant``; the ``qat`` pass runs all three with one loss.
Each value fold-qdq will quantize (the weights and activation inputs of the
linears, convs and matmuls it folds; an output only where another integer op
reads it, since fold-qdq gives float readers the unrounded accumulator; never
an add, a cat or a dynamic linear's input) gets an ``fxpress.fake_quantize``
(`fxpress.quant.fake_quant`) whose scale and zero point start at the
calibrated values; ``learn=true`` (the default) makes them trainable
parameters (LSQ step sizes; LSQ+ offsets for affine activations; power-of-two
scales stay fixed), ``learn=false`` fixed buffers. See
`fxpress.quant.qat_graph` for the rewrite.

Requires: ``observed``, ``calibrated``. Establishes: ``fake-quantized``
(the parameters now live in the ops and move with training;
``freeze-fake-quant`` makes them annotations again: ``fold-qdq`` on a graph
that still holds fake-quantize ops stops and says so). Numerics: the graph computes the
fake-quantized function (each value rounded to its int8 grid, as fold-qdq's
integer ops will). Bad input: an observed value without parameters (run
calibrate). Leaves alone: unobserved values, shared slots, values fold-qdq keeps float
(see above), values already wrapped (a second run changes nothing). Sits after calibrate, before a trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

from fxpress.ir.graph import Graph
from fxpress.ir.properties import Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.quant.qat_graph import insert_fake_quant


@dataclass(frozen=True)
class FakeQuantize(Pass):
    """Insert trainable fake quantization at every observed value (see the module docstring)."""

    name = "fake-quantize"
    requires = frozenset({Property.OBSERVED, Property.CALIBRATED})
    establishes = frozenset({Property.FAKE_QUANTIZED})
    forbids = frozenset({Property.QUANTIZED})

    learn: bool = True

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        wrapped = insert_fake_quant(graph, learn=self.learn)
        return PassResult(graph, modified=wrapped > 0, stats={"fake_quantized": wrapped})
