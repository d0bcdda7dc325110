"""Typed annotations that passes attach to nodes in ``node.meta["fxpress"]``.

An annotation is a frozen dataclass deriving from `Annotation`, stored under its
`key` in a per-node dict. Later passes (quantization parameters, sparsity,
channel groups) add subclasses; the verifier calls `check` on each one after
every pass, so an inconsistent annotation is caught where it was made.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch.fx

META_KEY = "fxpress"


@dataclass(frozen=True)
class Annotation:
    """Base class: a fact a pass records about one node."""

    key: ClassVar[str] = "annotation"

    def check(self, node: torch.fx.Node) -> str | None:
        """Return a description of what is inconsistent, or None when it holds."""
        return None

    def text(self) -> str:
        """A short stable text for the printer (rounded numbers, no addresses)."""
        return type(self).__name__


def annotations(node: torch.fx.Node) -> dict[str, Annotation]:
    """The annotations of `node` (a live dict; empty when there are none)."""
    return node.meta.setdefault(META_KEY, {})


def annotate(node: torch.fx.Node, annotation: Annotation) -> None:
    """Attach `annotation` to `node`, replacing one of the same key."""
    annotations(node)[annotation.key] = annotation


def get(node: torch.fx.Node, key: str) -> Annotation | None:
    """The annotation stored under `key` on `node`, if any."""
    return node.meta.get(META_KEY, {}).get(key)
