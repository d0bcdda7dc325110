"""The construction-time checks the training passes (fine-tune, distil, qat) make of the options they share.

Not a pass. Each training pass holds ``data`` (and maybe ``loss``) as
Python-only fields beside its text options ``epochs``, ``lr``, ``optimizer``
and ``schedule``; `check_training_fields` refuses bad values of those when the
pass is built, so a pipeline fails before anything runs, with `how` (the
pass's own "give it in Python: ..." line) in the message about data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fxpress.train.loop import OPTIMIZERS, SCHEDULES


def check_training_fields(p: Any, how: str) -> None:
    """Raise `ValueError` for a bad ``data``, ``loss``, ``epochs``, ``lr``, ``optimizer`` or ``schedule`` of `p`."""
    if isinstance(p.data, str | bytes):
        raise ValueError(f"training data cannot be given as text; {how}")
    if p.data is not None and not isinstance(p.data, Iterable):
        raise ValueError(f"data must be an iterable of (inputs..., target) tuples; {how}")
    loss = getattr(p, "loss", None)
    if loss is not None and not callable(loss):
        raise ValueError(f"loss must be a Python callable loss(output, target), got {loss!r}")
    if p.epochs < 1 or not p.lr > 0:
        raise ValueError(f"epochs must be >= 1 and lr > 0, got epochs={p.epochs}, lr={p.lr}")
    if p.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {p.optimizer!r}")
    if p.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {p.schedule!r}")
