"""The error structured pruning raises on bad input.

`PruneError` is an `fxpress.errors.PassError` (so callers catch it with every
other `FxpressError`) and a `ValueError` (so the pipeline parser turns a bad
option given in pipeline text into a `PipelineError`, like every pass option).
"""

from __future__ import annotations

from fxpress.errors import PassError


class PruneError(PassError, ValueError):
    """A pruning request cannot be honoured: bad ratio, unknown protected name, dynamic channels."""
