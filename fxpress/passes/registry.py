"""The explicit registry of passes and named pipelines, one line each.

A contract test checks that every pass class in ``fxpress/passes`` is listed
here and has tests. Named pipelines expand in pipeline text like a pass name:
``default`` (fold-bn, fold-constants, dce) and ``int8``, the post-training
quantization the CLI's ``quant-report`` and `fxpress.reports.quant_report` run
by default (written once, here).

`REGISTRY` bundles both for the parser (`fxpress.passes.pipeline` takes a
registry as an argument and imports no pass); `parse_pipeline` here is that
parser with this registry as its default, the one ``fxpress.passes`` exports.
"""

from __future__ import annotations

from fxpress.passes import pipeline
from fxpress.passes.annotate_sparsity import AnnotateSparsity
from fxpress.passes.base import Pass
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
from fxpress.passes.observe import Observe
from fxpress.passes.pipeline import PassRegistry
from fxpress.passes.prune.prune_channels import PruneChannels
from fxpress.passes.qat import Qat
from fxpress.passes.share_weights import ShareWeights
from fxpress.passes.sparsify import Sparsify

PASSES: dict[str, type[Pass]] = {
    FoldBatchNorm.name: FoldBatchNorm,
    FoldConstants.name: FoldConstants,
    DeadCodeElimination.name: DeadCodeElimination,
    Observe.name: Observe,
    Calibrate.name: Calibrate,
    FoldQDQ.name: FoldQDQ,
    PruneChannels.name: PruneChannels,
    Sparsify.name: Sparsify,
    AnnotateSparsity.name: AnnotateSparsity,
    FineTune.name: FineTune,
    Distil.name: Distil,
    FakeQuantize.name: FakeQuantize,
    FreezeFakeQuant.name: FreezeFakeQuant,
    Qat.name: Qat,
    ShareWeights.name: ShareWeights,
    LowRank.name: LowRank,
    CastBf16.name: CastBf16,
}

PIPELINES: dict[str, str] = {
    "default": "fold-bn,fold-constants,dce",
    "int8": "fold-bn,observe{per-channel=true},calibrate,fold-qdq",
}

REGISTRY = PassRegistry(PASSES, PIPELINES)


def parse_pipeline(text: str, registry: PassRegistry = REGISTRY) -> list[Pass]:
    """Parse pipeline text into pass objects (of `registry`, fxpress's own by default)."""
    return pipeline.parse_pipeline(text, registry)
