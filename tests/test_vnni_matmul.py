"""The VNNI batched int8 matmul (attention): u8s8 16-lane ``vpdpbusd`` with run-time corrections, bit-exact.

isa/x86_vnni/te_matmul.py lowers ``quantized_matmul`` / ``quantized_matmul_float``
with N % 16 == 0 as ``a + 128`` uint8 quads times int8 16-lane panels of
``b``, then undoes the shift and both zero points exactly (rowsum and colsum
corrections computed per call). Other N, symbolic M/K/N and very deep K keep
the s16 form. Checked: the lowering's choice (no build), bit-exactness against
the reference ops through ``fxpress.compile`` for MiniLM's attention shapes
and odd ones (zero points at their extremes, K not a multiple of 4, a 3-D bmm,
the attention scaling + mask fused into the epilogue, a symbolic batch), and
zmm ``vpdpbusd`` in the assembly. Numeric runs skip, naming the missing flag,
where the host lacks AVX512-VNNI. No timing assertions.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from tvm import relax, tirx

import fxpress
from fxpress.backends.tvm.isa.x86_vnni.bench import assembly
from fxpress.backends.tvm.isa.x86_vnni.int8 import VnniInt8
from fxpress.backends.tvm.isa.x86_vnni.te_matmul import fits_int32
from fxpress.ir import ops

pytestmark = pytest.mark.tvm

# (a shape, b shape, a_zp, b_zp, float out with attention's scaling and mask)
CASES = [
    ((1, 12, 128, 64), (1, 12, 64, 128), 3, -11, True),  # MiniLM Q·Kᵀ at sequence 128
    ((1, 12, 128, 64), (1, 12, 64, 128), 3, -11, False),
    ((1, 12, 128, 128), (1, 12, 128, 64), -128, 5, False),  # P·V: softmax output, c = 128 + a_zp = 0
    ((8, 12, 128, 64), (8, 12, 64, 128), -7, 20, True),  # batch 8
    ((2, 3, 10, 33), (2, 3, 33, 32), 127, -128, False),  # c = 255, b_zp at its minimum, K % 4 != 0
    ((2, 3, 10, 33), (2, 3, 33, 32), -128, 127, True),
    ((2, 3, 9, 20), (2, 3, 20, 48), 0, 0, False),  # no correction at all but the shift
    ((3, 7, 36), (3, 36, 16), -5, 0, False),  # a 3-D bmm, no row correction
    ((2, 3, 10, 33), (2, 3, 33, 24), 127, -128, False),  # N % 16 != 0: the s16 form
]
SCALE = 0.05 * 0.04


def _requant(real: float) -> tuple[int, int]:
    mult, shift = ops.requantize_params(torch.tensor([real], dtype=torch.float64))
    return int(mult), int(shift)


class QMatmuls(nn.Module):
    """quantize both operands -> quantized_matmul (int8 out) or quantized_matmul_float * scaling + mask, per case."""

    def __init__(self, cases: list[tuple]) -> None:
        super().__init__()
        self.cases = cases

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for (sa, _, a_zp, b_zp, float_out), i in zip(self.cases, range(0, len(xs), 3), strict=True):
            a = ops.quantize(xs[i], 0.05, a_zp, -128, 127)
            b = ops.quantize(xs[i + 1], 0.04, b_zp, -128, 127)
            if float_out:
                out.append(ops.quantized_matmul_float(a, a_zp, b, b_zp, SCALE) * 0.125 + xs[i + 2])
            else:
                mult, shift = _requant(SCALE / (0.02 * sa[-1] ** 0.5))
                out.append(ops.quantized_matmul(a, a_zp, b, b_zp, mult, shift, -2))
        return out


def _inputs(cases: list[tuple], seed: int = 0, batch: int | None = None) -> list[torch.Tensor]:
    """Per case: a, b (wide enough to reach both ends of int8) and an additive mask over the keys."""
    g = torch.Generator().manual_seed(seed)
    xs = []
    for sa, sb, *_ in cases:
        sa, sb = ((batch, *sa[1:]), (batch, *sb[1:])) if batch else (sa, sb)
        mask_shape = (*sa[:-3], 1, 1, sb[-1]) if len(sa) == 4 else (sa[0], 1, sb[-1])
        mask = torch.where(torch.rand(mask_shape, generator=g) < 0.2, -1e4, 0.0)
        xs += [torch.randn(sa, generator=g) * 5, torch.randn(sb, generator=g) * 5, mask]
    return xs


def _check(got: list[np.ndarray], want: list[torch.Tensor], cases: list[tuple]) -> None:
    for g, w, case in zip(got, want, cases, strict=True):
        if case[-1]:  # float out, then scaled and masked in float32: exact up to a fused multiply-add
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-6, atol=1e-6, err_msg=str(case))
        else:
            assert g.dtype == np.int8
            np.testing.assert_array_equal(g, w.numpy(), err_msg=str(case))
            # zero points at the extremes push most of the range into saturation (their float form checks all of it)
            assert len(np.unique(g)) > (5 if 127 in map(abs, case[2:4]) else 20), case


def _symbols(compiled: Any) -> str:
    return assembly(compiled.executable.mod)


@pytest.mark.parametrize("preset", ["x86-vnni", "x86"])
def test_compiled_matmuls_are_bit_exact_and_take_zmm_vpdpbusd(preset: str) -> None:
    from conftest import runnable_preset

    runnable_preset("x86-vnni")  # "x86" takes VNNI (or AMX, which inherits the matmul) only on such hosts
    target = runnable_preset(preset) if preset != "x86" else preset
    model = QMatmuls(CASES)
    xs = _inputs(CASES)
    compiled = fxpress.compile(fxpress.capture(model, tuple(xs)), target=target, num_threads=1)
    _check(compiled(*[x.numpy() for x in xs]), model(*xs), CASES)
    asm = _symbols(compiled)
    assert re.search(r"vpdpbusd\s.*%zmm", asm)
    assert "shift_rows_u8" in asm and "row_fix" in asm and "col_fix" in asm
    assert "vpdpwssd" in asm  # the N % 16 != 0 case kept the s16 form
    # the attention scaling and mask fused into the GEMM's epilogue
    assert re.search(r"fused_quantized_matmul\w*_multiply\w*_add", asm)


class TwoMatmuls(QMatmuls):
    """`QMatmuls` of two cases with named inputs (a varargs forward does not survive re-export with dynamic shapes)."""

    def forward(  # type: ignore[override]
        self, a0: torch.Tensor, b0: torch.Tensor, m0: torch.Tensor, a1: torch.Tensor, b1: torch.Tensor, m1: torch.Tensor
    ) -> list[torch.Tensor]:
        return super().forward(a0, b0, m0, a1, b1, m1)


def test_symbolic_batch_is_bit_exact() -> None:
    from conftest import runnable_preset

    target = runnable_preset("x86-vnni")
    cases = [CASES[0], CASES[2]]
    model = TwoMatmuls(cases)
    batch = {0: torch.export.Dim("batch")}
    xs = _inputs(cases, seed=1, batch=2)
    compiled = fxpress.compile(
        fxpress.capture(model, tuple(xs), dynamic_shapes=tuple(batch for _ in xs)), target=target, num_threads=1
    )
    assert "shift_rows_u8" in _symbols(compiled)
    for b in (1, 3):
        xs = _inputs(cases, seed=b, batch=b)
        _check(compiled(*[x.numpy() for x in xs]), model(*xs), cases)


def _lowered(a_shape: list, b_shape: list, a_zp: int = 3, b_zp: int = -11) -> set[str]:
    """The PrimFunc names `VnniInt8.matmul` emits for operands of these shapes (strings are symbolic)."""
    dims = lambda shape: [tirx.Var(d, "int64") if isinstance(d, str) else d for d in shape]  # noqa: E731
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType(dims(a_shape), "int8"))
    b = relax.Var("b", relax.TensorType(dims(b_shape), "int8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(VnniInt8(48).matmul(bb, a, a_zp, b, b_zp, (1 << 30, 4, 0), None))
        bb.emit_func_output(out)
    return {gv.name_hint for gv in bb.get().functions}


def test_lowering_takes_u8s8_only_where_it_is_exact_and_tiled() -> None:
    assert {"shift_rows_u8", "pack_activation_u8", "row_fix", "col_fix"} <= _lowered([2, 12, 128, 64], [2, 12, 64, 128])
    assert "widen" not in _lowered([2, 12, 128, 64], [2, 12, 64, 128])
    assert "row_fix" not in _lowered([2, 8, 16], [2, 16, 32], b_zp=0)
    assert "col_fix" not in _lowered([2, 8, 16], [2, 16, 32], a_zp=-128)
    assert "shift_rows_u8" in _lowered(["n", 12, 128, 64], ["n", 12, 64, 128])  # symbolic batch: rows + reshape
    for a_shape, b_shape in [
        ([2, 8, 16], [2, 16, 24]),  # N % 16 != 0
        ([2, 8, 20000], [2, 20000, 32]),  # too deep for the int32 corrections
    ]:
        names = _lowered(a_shape, b_shape)
        assert "widen" in names and "shift_rows_u8" not in names, (a_shape, b_shape)
    assert "shift_rows_u8" not in _lowered([2, 8, 16], [2, 16, "n"])  # symbolic N: the generic form


def test_int32_bound() -> None:
    assert fits_int32(4096) and fits_int32(16448) and not fits_int32(16449)
    k = 16448  # the worst case of each term and of the exact result
    assert 4 * 255 * 128 * k < 2**31 and 255 * 255 * k < 2**31
