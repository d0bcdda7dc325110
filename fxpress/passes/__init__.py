"""Compression and cleanup passes, the pass manager and pipeline text.

Pass classes are importable from here (``fxpress.passes.FoldBatchNorm``); the
registry maps their pipeline names to them.
"""

from fxpress.passes.annotate_sparsity import AnnotateSparsity
from fxpress.passes.base import Analysis, AnalysisManager, Pass, PassResult
from fxpress.passes.calibrate import Calibrate
from fxpress.passes.cast_bf16 import CastBf16
from fxpress.passes.dce import DeadCodeElimination
from fxpress.passes.distill import Distil
from fxpress.passes.fake_quantize import FakeQuantize
from fxpress.passes.fine_tune import FineTune
from fxpress.passes.fold_bn import FoldBatchNorm
from fxpress.passes.fold_constants import FoldConstants
from fxpress.passes.fold_qdq import FoldQDQ
from fxpress.passes.freeze_fake_quant import FreezeFakeQuant
from fxpress.passes.low_rank import LowRank
from fxpress.passes.manager import DumpIR, Instrument, PassManager, PrintIRAfter, Timing, optimize
from fxpress.passes.observe import Observe
from fxpress.passes.pipeline import PassRegistry, print_pipeline
from fxpress.passes.qat import Qat
from fxpress.passes.registry import PASSES, PIPELINES, REGISTRY, parse_pipeline
from fxpress.passes.share_weights import ShareWeights
from fxpress.passes.sparsify import Sparsify

__all__ = [
    "PASSES",
    "PIPELINES",
    "REGISTRY",
    "Analysis",
    "AnalysisManager",
    "AnnotateSparsity",
    "Calibrate",
    "CastBf16",
    "DeadCodeElimination",
    "Distil",
    "DumpIR",
    "FakeQuantize",
    "FineTune",
    "FoldBatchNorm",
    "FoldConstants",
    "FoldQDQ",
    "FreezeFakeQuant",
    "Instrument",
    "LowRank",
    "Observe",
    "Pass",
    "PassManager",
    "PassRegistry",
    "PassResult",
    "PrintIRAfter",
    "Qat",
    "ShareWeights",
    "Sparsify",
    "Timing",
    "optimize",
    "parse_pipeline",
    "print_pipeline",
]
