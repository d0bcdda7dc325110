"""One exception hierarchy for everything fxpress reports to a user.

Every error a user can provoke with bad input derives from `FxpressError`, so
callers can catch one type, and every message names what was wrong and what to
do about it. Subclasses exist per stage (capture, pipeline, pass, verify,
backend, artifact, input, export) so tests and callers can tell them apart.

Errors are structured rather than strings to be re-wrapped: `message` says
what is wrong and what to do, `node` names the graph node it concerns (or
None), `notes` are extra lines (the offending IR line with ``^^^``, the model's
source line). When an error leaves a pass, the pass manager records where
(`FxpressError.in_pass`: the pass, the passes before it, and whether it failed
inside the pass or in the graph the pass left) on the same object, so its type
and fields survive and the text is composed once, in ``str()``::

    in pass fold-qdq (after ['observe', 'calibrate']): <message>
    after pass bad-pass (ran before it: ['fold-bn']): <message>
      <notes, one per line>
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self


class FxpressError(Exception):
    """Base class of all errors fxpress raises on purpose (see the module docstring for its fields)."""

    def __init__(self, message: str = "", *, node: str | None = None, notes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.node = node
        self.notes: list[str] = list(notes)
        self.pass_name: str | None = None
        self.history: tuple[str, ...] = ()
        self.after_pass = False

    def in_pass(self, pass_name: str, history: Sequence[str], *, after: bool = False) -> Self:
        """Record the pass this error came from and the passes that ran before it; returns self.

        `after`: the pass returned, and the graph it left failed verification.
        The innermost pass is kept: a pass that runs a pipeline of its own
        reports the inner pass, and the outer one becomes a note.
        """
        if self.pass_name is None:
            self.pass_name, self.history, self.after_pass = pass_name, tuple(history), after
        else:
            self.notes.append(f"(while running pass {pass_name} after {list(history)})")
        return self

    def __str__(self) -> str:
        text = self.message
        if self.pass_name is not None:
            where = (
                f"after pass {self.pass_name} (ran before it: {list(self.history)})"
                if self.after_pass
                else f"in pass {self.pass_name} (after {list(self.history)})"
            )
            text = f"{where}: {text}"
        return "\n".join([text, *self.notes])


class CaptureError(FxpressError):
    """The model or its example inputs could not be captured as a graph."""


class PipelineError(FxpressError):
    """A pipeline is malformed: unknown pass or option, bad value, wrong order."""


class PassError(FxpressError):
    """A pass failed while running; the manager records which (`FxpressError.in_pass`)."""


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


class ExportError(FxpressError):
    """A graph cannot be written in another format (ONNX, a torch.export .pt2), or a saved one cannot be read."""


class PerformanceWarning(UserWarning):
    """The result is right but will run far slower than it could; the message says why and what to change."""
