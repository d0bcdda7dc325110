"""Graph properties: the facts passes require, establish and invalidate, declared once.

A property is something true of a whole graph after some pass ran
(``calibrated``: every observed activation has quantization parameters). A pass
declares which it ``requires``, ``establishes`` and ``invalidates``; the pass
manager keeps the set on `Graph.properties`, and `check_order` refuses a
pipeline in which a requirement would not hold, naming the pass to run first.

`Property` is a `StrEnum`: a member equals and hashes like its text, so
``"calibrated" in graph.properties`` holds, and messages, traces and manifests
show the text. Passes use the members, never bare strings, so a misspelt
property fails at import instead of being a requirement nothing establishes.
"""

from __future__ import annotations

from enum import StrEnum


class Property(StrEnum):
    """Every graph property a pass may require, establish or invalidate."""

    BN_FOLDED = "bn-folded"
    """Inference batch norms after a conv or linear are folded into its weights (fold-bn)."""
    OBSERVED = "observed"
    """Quantizable values carry observer slots, and weights their quantization parameters (observe)."""
    CALIBRATED = "calibrated"
    """Every observed activation carries quantization parameters from data (calibrate)."""
    QUANTIZED = "quantized"
    """Calibrated linears, convs and matmuls run as integer ops (fold-qdq)."""
    CHANNELS_PRUNED = "channels-pruned"
    """Channel groups were sliced smaller (prune-channels)."""
    SPARSIFIED = "sparsified"
    """Linear and conv weights were magnitude-pruned to a pattern (sparsify, fine-tune with sparsify)."""
    SPARSITY_ANNOTATED = "sparsity-annotated"
    """Sparse weights carry a measured `Sparsity` annotation (annotate-sparsity)."""
    FINE_TUNED = "fine-tuned"
    """The float parameters were trained on data (fine-tune)."""
    DISTILLED = "distilled"
    """The float parameters were trained against a teacher's outputs or features (distil)."""
    FAKE_QUANTIZED = "fake-quantized"
    """Quantized values pass through trainable ``fxpress.fake_quantize`` ops holding their parameters (fake-quantize)."""
    QAT_TRAINED = "qat-trained"
    """Weights and quantization parameters were trained through fake quantization (freeze-fake-quant, qat)."""
    LOW_RANK = "low-rank"
    """Linears and convs were replaced by chains of smaller dense factor layers (low-rank)."""
    WEIGHTS_SHARED = "weights-shared"
    """Linear and conv weights hold few shared values, k-means centroids or hash buckets (share-weights)."""
    BF16_CAST = "bf16-cast"
    """Chosen float linears compute in bfloat16 with float32 accumulation (cast-bf16)."""


QUANTIZED_WEIGHTS: frozenset[Property] = frozenset({Property.QUANTIZED, Property.FAKE_QUANTIZED})
"""What a pass that rewrites float weights by its own rule (low-rank, share-weights, sparsify, prune-channels) forbids.

After ``fold-qdq`` the weights are int8 parameters of integer ops, and after
``fake-quantize`` they sit behind rounding ops whose scales were measured on
the old weights: factorizing, clustering or pruning them then either finds
no float layer or silently detunes the quantization. Such a pass runs
before ``observe`` (check_order says so); trainers (fine-tune, distil) forbid
only ``quantized``, since training a fake-quantized graph is QAT.
"""

WEIGHT_DEPENDENT: frozenset[Property] = frozenset({Property.OBSERVED, Property.CALIBRATED})
"""What a pass that rewrites or replaces weights invalidates.

``observe`` computed the weights' quantization parameters and put observer
slots on the weight nodes; a new or changed weight carries neither (or stale
ones), and calibrated output ranges of a layer whose weights changed no longer
hold, so both must be made again: ``observe,fold-bn,calibrate`` is refused with
"run observe before it".
"""
