"""The errors a low-rank request raises on bad input, one class per mistake.

Each is a `LowRankError`: an `fxpress.errors.PassError` (callers catch it with
every other `FxpressError`) and a `ValueError` (the pipeline parser turns a bad
option given in pipeline text into a `PipelineError` that keeps the message).
Every message names the layer or option and what to write instead.
"""

from __future__ import annotations

from fxpress.errors import PassError


class LowRankError(PassError, ValueError):
    """A low-rank request cannot be honoured (the base of the errors below)."""


class RankError(LowRankError):
    """A rank of 0, or above what the layer's shape allows (min(out, in) for a matrix)."""


class UnknownLayerError(LowRankError):
    """``ranks`` or ``layers`` names a layer the graph does not have (the message lists the near names)."""


class ThresholdError(LowRankError):
    """``energy`` outside (0, 1], ``ratio`` outside (0, 1), both given, or a bad ``rank-multiple``."""
