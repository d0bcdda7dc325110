"""`fxpress.auto`: automatic compression, a search over per-layer methods against measured latency.

    result = fxpress.auto(graph, calibration=batches, budget="accuracy>=0.99")
    result.best.pipeline, result.pareto, print(result.text())

Modules, one concern each: `layers` (what is searched), `methods` (per-layer
methods and the pipeline text of a plan), `latency` (compiled one-layer
kernels, timed and cached), `evaluate` (the default evaluation and the checks
on a user one), `sensitivity` (each layer under each method alone), `budget`,
`cache`, `result` (points, Pareto set, the per-layer table), `plot`, and
`search` (the steps, see its docstring).

``fxpress.auto`` names this package, and importing any of its modules makes
Python set it as the attribute ``auto`` of ``fxpress``; so the package itself
is callable (``fxpress.auto(graph, ...)`` is `search.auto`), whichever import
ran first.
"""

import sys
import types
from typing import Any

from fxpress.auto.budget import Budget
from fxpress.auto.errors import AutoError, BudgetNotMetWarning
from fxpress.auto.methods import Method, Plan, default_methods, optimize_text, pipeline_text
from fxpress.auto.result import AutoResult, LayerReport, Point, Trial, pareto
from fxpress.auto.search import auto

__all__ = [
    "AutoError",
    "AutoResult",
    "Budget",
    "BudgetNotMetWarning",
    "LayerReport",
    "Method",
    "Plan",
    "Point",
    "Trial",
    "auto",
    "default_methods",
    "optimize_text",
    "pareto",
    "pipeline_text",
]


class _CallableModule(types.ModuleType):
    """This package, callable as `fxpress.auto.search.auto`."""

    def __call__(self, *args: Any, **kwargs: Any) -> AutoResult:
        return auto(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
