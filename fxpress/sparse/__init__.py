"""Sparsity below the channel level: patterns, magnitude masks and the `Sparsity` annotation.

Not passes: ``sparsify``, ``annotate-sparsity`` and ``fine-tune``
(``fxpress/passes``) use these to zero weights, measure them and record what
they found.

- `pattern`: `parse_pattern` (``unstructured``, ``N:M``, ``RxC`` blocks), the
  linear/conv weights a pattern applies to (`weight_sites`, `select`),
  magnitude masks per layer or global, and measurements (element, block and
  N:M density);
- `annotations`: `Sparsity`, the fact recorded on a weight's ``get_attr`` node.
"""

from fxpress.sparse.annotations import Sparsity
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
