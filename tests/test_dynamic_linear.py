"""observe{dynamic=[..]} -> fxpress.dynamic_quantized_linear: per-row uint8 at run time, eager and TVM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import runnable_preset, s16_spec

import fxpress
from fxpress.errors import PipelineError
from fxpress.ir import ops
from fxpress.passes import Calibrate, FoldQDQ, Observe


def _independent(x: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The documented rule, row by row in Python integers (the oracle for the op's reference)."""
    out = torch.empty(x.shape[0], w.shape[0])
    eps = torch.finfo(torch.float32).eps
    for r in range(x.shape[0]):
        row = x[r]
        lo, hi = torch.clamp(row.min(), max=0.0), torch.clamp(row.max(), min=0.0)
        scale = torch.clamp((hi - lo) / torch.tensor(255.0), min=eps)
        zp = int(torch.clamp(torch.round(-lo / scale), 0, 255))
        u = torch.clamp(torch.round(row / scale) + zp, 0, 255).to(torch.int64) - zp
        acc = (u[None, :] * w.to(torch.int64)).sum(1)
        out[r] = acc.float() * (scale * ws) + b
    return out


def test_reference_follows_the_documented_rule_and_tracks_float() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [torch.randn(5, 40, generator=g) * 3, torch.rand(2, 40, generator=g), -torch.rand(1, 40, generator=g)]
    )
    x[0, 3] = 25.0  # one outlier only widens its own row's range
    w_float = torch.randn(12, 40, generator=g) * 0.2
    ws = w_float.abs().amax(1) / 127
    w = torch.round(w_float / ws[:, None]).to(torch.int8)
    b = torch.randn(12, generator=g)
    y = ops.dynamic_quantized_linear(x, w, ws, b)
    torch.testing.assert_close(y, _independent(x, w, ws, b), rtol=1e-6, atol=1e-5)
    exact = torch.nn.functional.linear(x, w.float() * ws[:, None], b)
    row_step = (x.amax(1).clamp(min=0) - x.amin(1).clamp(max=0)) / 255
    bound = 0.5 * row_step[:, None] * (w.float() * ws[:, None]).abs().sum(1)[None, :] + 1e-5
    assert bool(((y - exact).abs() <= bound).all())


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.GELU(), torch.nn.Linear(64, 40)).eval()


def _quantize(model: torch.nn.Module, x: torch.Tensor, **observe: object) -> fxpress.Graph:
    data = [(x,), (x * 0.5,)]
    passes = [Observe(per_channel=True, **observe), Calibrate(data=data), FoldQDQ()]
    return fxpress.optimize(fxpress.capture(model, data[0]), passes)


def test_observe_marks_dynamic_linears_and_fold_qdq_makes_the_op() -> None:
    model = _mlp()
    x = torch.randn(8, 96)
    q = _quantize(model, x, dynamic=(r"^2$",))
    text = str(q)
    assert "fxpress.dynamic_quantized_linear(%" in text and text.count("fxpress.quantized_linear_float(") == 1
    assert "param f32[40]" in text and "param i8[40,64]" in text
    assert q.trace[-3].stats["dynamic"] == 1 and q.trace[-1].stats == {"folded": 2, "float": {}}
    assert "dynamic=[^2$]" in q.pipeline
    with torch.no_grad():
        assert float((q(x) - model(x)).abs().max()) < 0.05
    assert "quantize act dynamic" not in text  # the mark is consumed by the fold


@pytest.mark.tvm
@pytest.mark.parametrize("path", ["u8s8", "s16", "generic", "host"])
def test_tvm_matches_the_reference(path: str) -> None:
    target = {"u8s8": "x86-avx2", "generic": "x86-64", "host": "x86"}.get(path)
    target = s16_spec() if path == "s16" else runnable_preset(target) if path != "host" else target
    model = _mlp()
    x = torch.randn(2, 7, 96) * 2
    q = _quantize(model, x, dynamic=(r"^2$",), weight_reduce_range=True)
    compiled = fxpress.compile(q, target=target, num_threads=1)
    want = q(x).detach().numpy()
    np.testing.assert_allclose(compiled(x.numpy()), want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    asm = compiled.executable.mod.imports[0].inspect_source("asm")
    if path == "u8s8":
        assert "vpmaddubsw" in asm


def test_bad_dynamic_regex_is_named() -> None:
    with pytest.raises((ValueError, PipelineError), match="bad regex"):
        Observe(dynamic=("(",))
