"""One exception hierarchy for everything fxpress reports to a user.

Every error a user can provoke with bad input derives from `FxpressError`, so
callers can catch one type, and every message names what was wrong and what to
do about it. Subclasses exist per stage (capture, pipeline, pass, verify,
backend, artifact, input) so tests and callers can tell them apart.
"""

from __future__ import annotations


class FxpressError(Exception):
    """Base class of all errors fxpress raises on purpose."""


class CaptureError(FxpressError):
    """The model or its example inputs could not be captured as a graph."""


class PipelineError(FxpressError):
    """A pipeline is malformed: unknown pass or option, bad value, wrong order."""


class PassError(FxpressError):
    """A pass failed while running; the message names the pass and the node."""


class VerifyError(FxpressError):
    """The graph is not well formed (after capture or after a pass)."""


class TargetError(FxpressError):
    """An unknown or unusable compilation target."""


class BackendError(FxpressError):
    """Lowering or building for a backend failed."""


class ArtifactError(FxpressError):
    """An artifact is missing, incomplete, tampered with or from a newer format."""


class InputError(FxpressError):
    """Inputs given to a compiled model or artifact do not match its signature."""
