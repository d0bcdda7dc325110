"""The explicit registry of passes and named pipelines, one line each.

A contract test checks that every pass class in ``fxpress/passes`` is listed
here and has tests. Named pipelines expand in pipeline text like a pass name.
"""

from __future__ import annotations

from fxpress.passes.annotate_sparsity import AnnotateSparsity
from fxpress.passes.base import Pass
from fxpress.passes.calibrate import Calibrate
from fxpress.passes.dce import DeadCodeElimination
from fxpress.passes.fine_tune import FineTune
from fxpress.passes.fold_bn import FoldBatchNorm
from fxpress.passes.fold_constants import FoldConstants
from fxpress.passes.fold_qdq import FoldQDQ
from fxpress.passes.observe import Observe
from fxpress.passes.prune.prune_channels import PruneChannels
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
}

PIPELINES: dict[str, str] = {
    "default": "fold-bn,fold-constants,dce",
}
