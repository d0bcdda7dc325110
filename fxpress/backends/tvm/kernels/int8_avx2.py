"""int8 GEMM on AVX2 with ``vpmaddwd``: exact, about 4x the int32 multiply path.

AVX2 has no VNNI. ``vpmaddubsw`` (u8 x s8 -> s16) saturates for full-range
inputs, so fxpress takes the exact road: activations, with their zero point
already subtracted, and weights are widened to int16, and ``vpmaddwd``
multiplies 16 int16 pairs and adds neighbours into 8 int32 lanes, i.e. 16
multiply-adds per instruction, never saturating (|x - zp| <= 255, |w| <= 127).

Data layout (made by the ``quantized_linear`` converter):

    A16[m.., K2, 2]     int16  x - x_zp, K padded to even with zeros (a cheap prologue)
    B16[N8, K2, 8, 2]   int16  weights packed at compile time: B16[n/8, k/2, n%8, k%2]
    C[m.., N8, 8]       int32  C[.., n/8, n%8] = sum_k A16 * B16

The micro-kernel keeps MR x 2 vectors of 8 int32 accumulators in registers;
each step broadcasts one (k, k+1) pair of A16 as an int32 and multiplies it
with two B16 vectors (`fx_avx2_pmaddwd_8x2`, a TensorIntrin). The
requantization epilogue is fused into the tile.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.s_tir.dlight.base import get_extent
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_cpu_has_features

from fxpress.backends.tvm.kernels.base import (
    FxpressCPURule,
    attach_epilogue,
    find_kernel,
    is_multiply_accumulate,
    parallel_if_worth_it,
    work,
)

INTRIN = "fx_avx2_pmaddwd_8x2"


@T.prim_func(s_tir=True)
def _desc(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _impl(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        pair = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.reinterpret(T.broadcast(pair, 8), dtype="int16x16"),
            B.vload([0, 0], dtype="int16x16"),
            dtype="int32x8",
        )


TensorIntrin.register(INTRIN, _desc, _impl, override=True)


def has_avx2(target: Target) -> bool:
    return llvm_cpu_has_features(["avx2"], target)


def _is_pmadd_gemm(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """``C[m.., n/8, n%8] += A16[m.., k/2, k%2] * B16[n/8, k/2, n%8, k%2]``, int16 in, int32 out."""
    stmt = sch.get(block)
    n = len(stmt.iter_vars)
    return (
        n >= 4
        and is_multiply_accumulate(stmt, "S" * (n - 2) + "RR")
        and stmt.writes[0].source.dtype == "int32"
        and len(stmt.reads) == 2
        and all(r.source.dtype == "int16" for r in stmt.reads)
        and any(len(r.source.shape) == 4 for r in stmt.reads)
    )


class CPUInt8MatmulAVX2(FxpressCPURule):
    """Tensorized vpmaddwd GEMM for `quantized_linear` (see module docstring)."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        if not has_avx2(target):
            return None
        kernel = find_kernel(func, _is_pmadd_gemm)
        if kernel is None:
            return None
        sch, main = kernel.sch, kernel.main
        macs = work(sch, main)
        *lead, n8, ni, k2, kk = sch.get_loops(main)
        m = sch.fuse(*lead) if len(lead) > 1 else lead[0] if lead else None
        if m is None:
            return None
        rows = get_extent(sch, m)
        mr = next((r for r in (6, 5, 4, 3, 7, 2, 1) if isinstance(rows, int) and rows % r == 0), None)
        groups = get_extent(sch, n8)
        nr = 2 if isinstance(groups, int) and groups % 2 == 0 else 1
        if mr is None:
            return None
        mo, mi = sch.split(m, factors=[None, mr])
        no, nio = sch.split(n8, factors=[None, nr])
        sch.reorder(no, mo, k2, mi, nio, ni, kk)
        outer = sch.fuse(no, mo)
        parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(acc, outer, preserve_unit_loops=True)
        attach_epilogue(sch, [main, acc], kernel.after, outer)
        sch.decompose_reduction(main, k2)
        sch.tensorize(ni, INTRIN)
        sch.unroll(mi)
        sch.unroll(nio)
        return sch
