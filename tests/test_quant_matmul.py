"""int8 matmul of two activations (attention): the exact reference, fold-qdq golden IR, TVM bit-exact."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.ir import ops
from fxpress.ir.annotations import get
from fxpress.passes import Calibrate, Observe
from fxpress.passes.fold_qdq import FoldQDQ

# (a shape, b shape): attention's Q·Kᵀ and P·V, odd sizes, a 3-D bmm, a broadcast 2-D right operand
SHAPES = [
    ((2, 4, 10, 8), (2, 4, 8, 10)),
    ((2, 4, 10, 10), (2, 4, 10, 8)),
    ((3, 7, 33), (3, 33, 13)),
    ((2, 5, 6), (6, 9)),
]


def _requant(real: float) -> tuple[int, int]:
    mult, shift = ops.requantize_params(torch.tensor([real], dtype=torch.float64))
    return int(mult), int(shift)


@pytest.mark.parametrize(("sa", "sb"), SHAPES)
def test_reference_is_exact_and_tracks_float(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(len(sa) + sa[-1])
    a = torch.randint(-128, 128, sa, generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, sb, generator=g, dtype=torch.int8)
    a_zp, b_zp, out_zp = 9, -20, 4
    real = 0.5 / (sa[-1] * 128)
    mult, shift = _requant(real)
    y = ops.quantized_matmul(a, a_zp, b, b_zp, mult, shift, out_zp)
    acc = torch.matmul(a.to(torch.int64) - a_zp, b.to(torch.int64) - b_zp)  # independent: int64 arithmetic
    want = ((acc * mult + (1 << (30 + shift))) >> (31 + shift)) + out_zp
    torch.testing.assert_close(y, want.clamp(-128, 127).to(torch.int8), rtol=0, atol=0)
    assert len(y.unique()) > 20
    exact_real = mult * 2.0 ** -(31 + shift)
    inside = (y > -128) & (y < 127)
    err = (y.double() - out_zp - acc.double() * exact_real)[inside]
    assert float(err.abs().max()) <= 0.5 + 1e-9  # within rounding of the real-valued product


class QMatmuls(nn.Module):
    """quantize both operands -> quantized_matmul -> dequantize (and the float-out form), once per `SHAPES` entry."""

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i in range(0, len(xs), 2):
            a = ops.quantize(xs[i], 0.05, 3, -128, 127)
            b = ops.quantize(xs[i + 1], 0.04, -11, -128, 127)
            mult, shift = _requant(0.05 * 0.04 / (0.02 * xs[i].shape[-1] ** 0.5))
            y = ops.quantized_matmul(a, 3, b, -11, mult, shift, -2)
            out += [y, ops.dequantize(y, 0.02, -2), ops.quantized_matmul_float(a, 3, b, -11, 0.05 * 0.04)]
        return out


@pytest.mark.tvm
def test_quantized_matmul_tvm_bit_exact(int8_path: str) -> None:
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(s, generator=g) * 3 for pair in SHAPES for s in pair]
    model = QMatmuls()
    compiled = fxpress.compile(fxpress.capture(model, tuple(xs)), target=int8_path, num_threads=1)
    got, want = compiled(*[x.numpy() for x in xs]), model(*xs)
    for i, shapes in enumerate(SHAPES):
        assert got[3 * i].dtype == np.int8
        np.testing.assert_array_equal(got[3 * i], want[3 * i].numpy(), err_msg=str(shapes))
        np.testing.assert_array_equal(got[3 * i + 1], want[3 * i + 1].numpy(), err_msg=str(shapes))
        assert len(np.unique(got[3 * i])) > 20, shapes
        # the float-out form: float32(exact int32 accumulator) * scale, bit for bit
        assert got[3 * i + 2].dtype == np.float32
        np.testing.assert_array_equal(got[3 * i + 2], want[3 * i + 2].numpy(), err_msg=str(shapes))


class Attention(nn.Module):
    """Multi-head self-attention written out: qkv projection, Q·Kᵀ, softmax, P·V, output projection."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, s, d))


def _data(n: int = 6, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 10, 32, generator=g),) for _ in range(n)]


def _ops(graph: fxpress.Graph) -> list[str]:
    return re.findall(r"= ((?:aten|fxpress)\.[A-Za-z_0-9.]+)\(", str(graph))


def test_golden_attention_block() -> None:
    torch.manual_seed(0)
    model, data = Attention().eval(), _data()
    q = fxpress.optimize(fxpress.capture(model, data[0]), [Observe(per_channel=True), Calibrate(data=data), FoldQDQ()])
    # fmt: off
    # Kᵀ is transposed in int8 and P·V's int8 result flows through its transpose and reshape into proj:
    # fold-qdq moves each quantize above the ops that only move values, then q(dq(t)) cancels
    # qkv, Q·Kᵀ and proj are read by float ops only (unbind, softmax, the output): float-out forms
    assert _ops(q) == [
        "fxpress.quantize", "fxpress.quantized_linear_float",  # qkv
        "aten.view", "aten.permute", "aten.unbind.int",
        "fxpress.quantize", "aten.transpose.int",  # Kᵀ
        "fxpress.quantize", "fxpress.quantized_matmul_float",  # Q·Kᵀ: only the softmax reads it, in float
        "aten.mul.Tensor", "aten.softmax.int",
        "fxpress.quantize", "fxpress.quantize", "fxpress.quantized_matmul",  # P·V
        "aten.transpose.int", "aten.reshape",
        "fxpress.quantized_linear_float",  # proj
    ]
    # fmt: on
    text = str(q)
    ((scores, scores_type),) = re.findall(r"fxpress\.quantized_matmul_float\((.*)\) : (\S+)", text)
    ((context, context_type),) = re.findall(r"fxpress\.quantized_matmul\((.*)\) : (\S+)", text)
    assert scores_type == "f32[2,4,10,10]" and context_type == "i8[2,4,10,8]"
    assert 0 < float(scores.split(", ")[4]) < 1e-2  # a_scale * b_scale
    # per-tensor requantization inline: (a, a_zp, b, b_zp, Q31 multiplier, shift, out_zp)
    mult, shift = (int(v) for v in context.split(", ")[4:6])
    assert 2**30 <= mult < 2**31 and -30 <= shift <= 30
    # softmax output is in [0, 1]: its int8 zero point is the bottom of the range
    assert re.search(r"fxpress\.quantize\(%\d+, [0-9.e-]+, -128, -128, 127\) : i8\[2,4,10,10\]", text)
    assert q.trace[-1].stats == {"folded": 4, "float": {}}


def test_int8_attention_accuracy_and_tvm() -> None:
    torch.manual_seed(1)
    model, data = Attention().eval(), _data(seed=1)
    q = fxpress.optimize(fxpress.capture(model, data[0]), [Observe(per_channel=True), Calibrate(data=data), FoldQDQ()])
    (out,) = q.output_node.args[0]
    step = float(get(out, "qparams").scale)
    with torch.no_grad():
        for (x,) in data:
            assert float((q(x) - model(x)).abs().max()) <= 8 * step
            cos = nn.functional.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0)
            assert float(cos) > 0.995
    compiled = fxpress.compile(q, target="x86", num_threads=1)
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(11))
    np.testing.assert_array_equal(compiled(x.numpy()), q(x).numpy())


class MaskedAttention(Attention):
    """BERT's form: scaled scores plus an additive mask broadcast over heads."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5 + mask, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, s, d))


def test_int8_attention_with_a_dynamic_batch_matches_eager() -> None:
    """A symbolic batch takes other kernel paths (rows unknown at compile time); they must stay exact too."""
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(2)

    def inputs(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.where(torch.rand(b, 1, 1, 16, generator=g) < 0.2, -1e4, 0.0).expand(b, 1, 16, 16).contiguous()
        return torch.randn(b, 16, 32, generator=g), mask

    model, data = MaskedAttention().eval(), [inputs(2) for _ in range(4)]
    batch = {0: torch.export.Dim("batch")}
    graph = fxpress.capture(model, data[0], dynamic_shapes=(batch, batch))
    q = fxpress.optimize(graph, [Observe(per_channel=True), Calibrate(data=data), FoldQDQ()])
    compiled = fxpress.compile(q, target="x86", num_threads=1)
    for b in (1, 3):
        x, mask = inputs(b)
        np.testing.assert_allclose(compiled(x.numpy(), mask.numpy()), q(x, mask).numpy(), rtol=0, atol=1e-5)


class ConstantRight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.w)


def test_matmul_with_a_constant_operand_stays_float() -> None:
    torch.manual_seed(2)
    model = ConstantRight().eval()
    data = [(torch.randn(4, 16),) for _ in range(3)]
    graph = fxpress.optimize(fxpress.capture(model, data[0]), [Observe(per_channel=True), Calibrate(data=data)])
    q = fxpress.optimize(graph, [FoldQDQ()])
    assert q.trace[-1].modified is False
    assert list(q.trace[-1].stats["float"].values()) == ["an operand is a constant (use a linear for constant weights)"]
    assert str(q) == str(graph)
    with torch.no_grad():
        torch.testing.assert_close(q(data[0][0]), model(data[0][0]))
