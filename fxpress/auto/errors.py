"""The search's own error: bad inputs to `fxpress.auto` (budget, evaluation, calibration, methods).

`AutoError` is an `InputError` (so an `FxpressError`): callers that catch
fxpress's errors catch it, and its message says what to fix.
"""

from __future__ import annotations

from fxpress.errors import InputError


class AutoError(InputError):
    """A bad input to the search, or an evaluation that failed on a candidate (the message names it)."""


class BudgetNotMetWarning(UserWarning):
    """No evaluated candidate meets the budget; the result still holds the Pareto set (``met`` is False)."""
