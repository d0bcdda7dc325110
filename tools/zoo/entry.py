"""`ZooEntry`: one architecture of the coverage zoo, and how to build it.

`build` returns a fresh eval-mode model with random (seeded) weights and example inputs for it; it must
not download anything. `fast` marks the entries small enough for the default test run (the rest are
``slow``). `prunable` says whether the model has channels structured pruning can remove (a model with
none is reported "n/a" for prune-channels rather than failed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ZooEntry:
    """One architecture: a name for the table, its family ("transformers-encoder", "vision", "classic", ...)."""

    name: str
    family: str
    build: Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]
    prunable: bool = True
    fast: bool = False
    note: str = ""
