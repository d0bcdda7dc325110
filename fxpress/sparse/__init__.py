"""Sparsity below the channel level: patterns, magnitude masks and the `Sparsity` annotation.

Not passes: ``sparsify``, ``annotate-sparsity`` and ``fine-tune``
(``fxpress/passes``) use these to zero weights, measure them and record what
they found.

- `pattern`: `parse_pattern` (``unstructured``, ``N:M``, ``RxC`` blocks), the
  linear/conv weights a pattern applies to (`weight_sites`, `select`),
  magnitude masks per layer or global, and measurements (element, block and
  N:M density);
- `masks`: `MagnitudeMasks`, a whole request (density, pattern, scope, which
  weights) and the masks it gives; ``sparsify`` applies it, ``fine_tune`` ramps it;
- `annotations`: `Sparsity`, the fact recorded on a weight's ``get_attr`` node.
"""

from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.masks import MagnitudeMasks, MaskSource
from fxpress.sparse.pattern import (
    Pattern,
    SparsityError,
    WeightSite,
    block_density,
    element_density,
    global_masks,
    magnitude_mask,
    measure,
    nm_holds,
    parse_pattern,
    select,
    weight_sites,
)

__all__ = [
    "MagnitudeMasks",
    "MaskSource",
    "Pattern",
    "Sparsity",
    "SparsityError",
    "WeightSite",
    "block_density",
    "element_density",
    "global_masks",
    "magnitude_mask",
    "measure",
    "nm_holds",
    "parse_pattern",
    "select",
    "weight_sites",
]
