"""Low-rank factorization of linear and conv weights: the math and the plan, below the passes.

Not a pass: the ``low-rank`` pass (``fxpress/passes/low_rank.py``) and the
low-rank report (``fxpress/reports/low_rank_report.py``) use these to choose
ranks, factorize weights and rewrite the graph, so both see the same plan.

- `factors`: truncated SVD (linears; convs as kxk then 1x1), Tucker-2 (1x1, kxk
  core, 1x1; HOSVD then HOOI) and spatial (kh x 1 then 1 x kw) factorizations,
  their eager reference, spectra and energy ranks (torch only);
- `plan`: `LowRankRequest` (method, energy / ratio / ranks, layers, skip,
  rank-multiple), the layers of a graph and why some are left alone, and
  `plan_low_rank`: one row per layer with its rank, weights, MACs and error;
- `rewrite`: `apply_plan`, each planned op replaced by its factor ops;
- `annotations`: `LowRankFactor`, the mark on every factor weight;
- `errors`: `LowRankError` and one subclass per kind of bad input.
"""

from fxpress.lowrank.annotations import LowRankFactor
from fxpress.lowrank.errors import LowRankError, RankError, ThresholdError, UnknownLayerError
from fxpress.lowrank.factors import (
    ConvGeometry,
    Factorization,
    Stage,
    energy_rank,
    spatial_factors,
    svd_factors,
    tucker2_factors,
)
from fxpress.lowrank.plan import LayerPlan, LowRankRequest, find_layers, plan_low_rank
from fxpress.lowrank.rewrite import apply_plan

__all__ = [
    "ConvGeometry",
    "Factorization",
    "LayerPlan",
    "LowRankError",
    "LowRankFactor",
    "LowRankRequest",
    "RankError",
    "Stage",
    "ThresholdError",
    "UnknownLayerError",
    "apply_plan",
    "energy_rank",
    "find_layers",
    "plan_low_rank",
    "spatial_factors",
    "svd_factors",
    "tucker2_factors",
]
