"""Post-training quantization helpers: schemes, observers and their annotations.

Not passes: the ``observe`` and ``calibrate`` passes (``fxpress/passes``) use
these to decide how each value is quantized and to record it on the graph.

- `scheme`: `QScheme` (int8/uint8, symmetric/affine, per-tensor/per-channel,
  linear or power-of-two scales, integer range, uniform or log levels: zero
  and +-2^k for 2 to 4-bit log weights) and `compute_qparams`, the
  (scale, zero point) a [min, max] range gives under a scheme;
- `observers`: statistics collectors (min-max, moving-average, torch-compatible
  histogram, percentile, MSE, entropy) that choose that range from data;
- `annotations`: `ObserverSlot` and `QuantParams`, the facts passes attach to
  nodes;
- `opsets`: the quantizable roots and the ops whose ranges pass through,
  shared by ``observe``, ``fold-qdq`` and quant-report;
- `calib_data`: calibration batches from files or a factory, and
  `check_batch`, the check every calibration batch passes.

quant-report runs the passes, so it lives above them (`fxpress.reports`).
"""

from fxpress.quant.annotations import ObserverSlot, QuantParams
from fxpress.quant.observers import OBSERVERS, Observer, ObserverSpec
from fxpress.quant.scheme import QScheme, compute_qparams, fake_quantize

__all__ = [
    "OBSERVERS",
    "Observer",
    "ObserverSlot",
    "ObserverSpec",
    "QScheme",
    "QuantParams",
    "compute_qparams",
    "fake_quantize",
]
