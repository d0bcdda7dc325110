"""freeze-fake-quant: turn trained fake-quantize ops back into quantization parameters.

    %yf = fake_quantize(%y, %y_scale, %y_zp, ...)   ->   %y  # qparams scale=<trained> zp=<trained>

The last of QAT's three steps (``fake-quantize``, a trainer, this): each
``fxpress.fake_quantize`` is removed and the scale and zero point it holds
(trained or fixed) become the `QuantParams` of the value it wrapped: the
scale at least float32 eps, the zero point rounded and clamped, exactly as the
op used them. The graph is a calibrated graph again, and ``fold-qdq`` folds
it into the same int8 ops as post-training quantization.

Requires: ``fake-quantized``. Establishes: ``observed``, ``calibrated``,
``qat-trained``; invalidates ``fake-quantized``. Numerics: the float graph
that remains computes the unquantized function of the trained weights; the
fake-quantized function returns with ``fold-qdq`` (within its one-step
rounding of bias and multiplier). Bad input: a fake-quantize op that carries
no scheme (not made by fake-quantize). Leaves alone: every other node and
tensor (only the scale and zero point tensors of the removed ops go). It runs
once: it consumes the ``fake-quantized`` it requires. Sits after the trainer,
before fold-qdq.
"""

from __future__ import annotations

from dataclasses import dataclass

from fxpress.ir.graph import Graph
from fxpress.ir.properties import Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.quant.qat_graph import freeze_fake_quant


@dataclass(frozen=True)
class FreezeFakeQuant(Pass):
    """Read trained fake-quantize parameters back into annotations (see the module docstring)."""

    name = "freeze-fake-quant"
    requires = frozenset({Property.FAKE_QUANTIZED})
    establishes = frozenset({Property.OBSERVED, Property.CALIBRATED, Property.QAT_TRAINED})
    invalidates = frozenset({Property.FAKE_QUANTIZED})

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        frozen = freeze_fake_quant(graph)
        return PassResult(graph, modified=frozen > 0, stats={"frozen": frozen})
