"""int8 GEMM on AVX2: ``vpmaddubsw`` where it cannot saturate, else ``vpmaddwd``; both exact.

AVX2 has no VNNI. Two micro-kernels, chosen per layer by the converter:

- **u8s8** (``fx_avx2_pmaddubsw_8x4``): activations shifted to uint8
  (``x + 128``), int8 weights; ``vpmaddubsw`` multiplies 32 u8 x s8 pairs and
  adds neighbours into 16 int16 lanes, ``vpmaddwd`` with ones widens them into
  8 int32 lanes: 32 multiply-adds per two instructions that issue on different
  pipes (measured here: ~84 GMAC/s against ~47 for ``vpmaddwd`` alone). The
  int16 pair sum saturates unless ``255 * (w0 + w1) <= 32767`` for each
  same-signed pair of neighbouring weights; the converter checks the actual
  weights at compile time (7-bit weights, ``observe{weight-reduce-range}``,
  always pass) and takes this kernel only then. The +128 shift is undone by
  ``(128 + x_zp) * colsum(w)``, folded into the bias at compile time.
- **s16** (``fx_avx2_pmaddwd_8x2``, any int8 weights): activations with their
  zero point subtracted and weights widened to int16; ``vpmaddwd`` does 16
  multiply-adds per instruction and never saturates (|x - zp| <= 255, |w| <= 128).

Data layout (made by the ``quantized_linear`` converter), with V = 2 (s16) or 4 (u8s8):

    A[m.., K/V, V]       int16 x - x_zp | uint8 x + 128; K padded with zeros (a cheap prologue)
    B[N/8, K/V, 8, V]    int16 | int8 weights packed at compile time: B[n/8, k/V, n%8, k%V]
    C[m.., N/8, 8]       int32  C[.., n/8, n%8] = sum_k A * B

The micro-kernel keeps MR x 2 vectors of 8 int32 accumulators in registers;
each step broadcasts V values of A (one int32) and multiplies them with two B
vectors (a TensorIntrin). The requantization epilogue is fused into the tile.
"""

from __future__ import annotations

import torch
from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.s_tir.dlight.base import get_extent
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_cpu_has_features

from fxpress.backends.tvm.kernels.base import (
    ACC_SCOPE,
    FxpressCPURule,
    attach_epilogue,
    find_kernel,
    is_multiply_accumulate,
    parallel_if_worth_it,
    work,
)

INTRIN = "fx_avx2_pmaddwd_8x2"
INTRIN_U8S8 = "fx_avx2_pmaddubsw_8x4"
ROW_GROUP = "fxpress.row_group"  # block annotation: rows that share one B (a batched matmul's rows per batch)


def _description(a_dtype: str, b_dtype: str, v: int) -> tirx.PrimFunc:
    """``C[i] += sum_k A[k] * B[i, k]`` over 8 int32 lanes and `v` values per lane: what a micro-kernel computes."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((v,), a_dtype, offset_factor=1),
        B: T.Buffer((8, v), b_dtype, offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=ACC_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:v], B[0:8, 0:v])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, v):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _broadcast_group(a: tirx.Buffer, dtype: str, lanes: str) -> tirx.PrimExpr:
    """The `a` group (V values, 32 bits) broadcast to all 8 int32 lanes, as a `lanes` vector."""
    return T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], dtype), dtype="int32"), 8), dtype=lanes)


# Each implementation is one expression: a name bound in TVMScript becomes a
# local allocation, which the host lowering turns into a workspace call per tile.
@T.prim_func(s_tir=True)
def _impl(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            _broadcast_group(A, "int16x2", "int16x16"),
            B.vload([0, 0], dtype="int16x16"),
            dtype="int32x8",
        )


TensorIntrin.register(INTRIN, _description("int16", "int16", 2), _impl, override=True)


@T.prim_func(s_tir=True)
def _impl_u8s8(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                _broadcast_group(A, "uint8x4", "uint8x32"),
                B.vload([0, 0], dtype="int8x32"),
                dtype="int16x16",
            ),
            T.broadcast(T.int16(1), 16),
            dtype="int32x8",
        )


TensorIntrin.register(INTRIN_U8S8, _description("uint8", "int8", 4), _impl_u8s8, override=True)

# The operand dtypes of each micro-kernel: (activation, weight) -> intrinsic.
MICRO_KERNELS = {("int16", "int16"): INTRIN, ("uint8", "int8"): INTRIN_U8S8}


def micro_kernel(stmt: tirx.Stmt) -> str | None:
    """The intrinsic for a GEMM/conv block's (activation, weight) read dtypes, if one fits."""
    dtypes = tuple(str(r.source.dtype) for r in stmt.reads)
    if len(dtypes) != 2:
        return None
    return MICRO_KERNELS.get(dtypes) or MICRO_KERNELS.get(dtypes[::-1])  # type: ignore[arg-type]


def u8s8_safe(weight: torch.Tensor) -> bool:
    """Whether `weight` (int8 [O, I, ...]) never saturates vpmaddubsw with uint8 activations in [0, 255].

    vpmaddubsw adds the products of neighbouring inputs (i = 2j, 2j + 1, same
    output and kernel position) in int16; the worst case of ``u0 * w0 + u1 * w1``
    is 255 times the sum of the pair's positive (or negative) weights.
    """
    w = weight.to(torch.int32)
    if w.dim() < 2:
        return False
    if w.shape[1] % 2:
        w = torch.nn.functional.pad(w.movedim(1, -1), (0, 1)).movedim(-1, 1)
    even, odd = w[:, 0::2], w[:, 1::2]
    pos = even.clamp(min=0) + odd.clamp(min=0)
    neg = (-even).clamp(min=0) + (-odd).clamp(min=0)
    return bool(255 * max(int(pos.max()), int(neg.max())) <= 32767)


def has_avx2(target: Target) -> bool:
    return llvm_cpu_has_features(["avx2"], target)


def _is_pmadd_gemm(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """``C[m.., n/8, n%8] += A[m.., k/V, k%V] * B[n/8, k/V, n%8, k%V]`` (a micro-kernel's dtypes), int32 out."""
    stmt = sch.get(block)
    n = len(stmt.iter_vars)
    return (
        n >= 4
        and is_multiply_accumulate(stmt, "S" * (n - 2) + "RR")
        and stmt.writes[0].source.dtype == "int32"
        and micro_kernel(stmt) is not None
        and any(len(r.source.shape) == 4 for r in stmt.reads)
    )


class CPUInt8MatmulAVX2(FxpressCPURule):
    """Tensorized vpmaddubsw / vpmaddwd GEMM for `quantized_linear` (see module docstring)."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        if not has_avx2(target):
            return None
        kernel = find_kernel(func, _is_pmadd_gemm)
        if kernel is None:
            return None
        sch, main = kernel.sch, kernel.main
        intrin = micro_kernel(sch.get(main))
        macs = work(sch, main)
        *lead, n8, ni, k2, kk = sch.get_loops(main)
        m = sch.fuse(*lead) if len(lead) > 1 else lead[0] if lead else None
        if m is None:
            return None
        rows = get_extent(sch, m)
        # A batched matmul's B panel changes every `group` rows: a tile inside one batch shares its B loads.
        group = int(sch.get(main).annotations.get(ROW_GROUP, 0))
        tile = (r for r in (6, 5, 4, 3, 7, 2, 1) if isinstance(rows, int) and rows % r == 0 and group % r == 0)
        mr = next(tile, None)
        groups = get_extent(sch, n8)
        nr = 2 if isinstance(groups, int) and groups % 2 == 0 else 1
        if mr is None:
            return None
        no, nio = sch.split(n8, factors=[None, nr])
        if group > 1 and isinstance(rows, int) and rows > group and rows % group == 0:
            # one batch at a time: its A rows and B panel stay in cache while every column block passes
            batch, mo, mi = sch.split(m, factors=[None, group // mr, mr])
            sch.reorder(batch, no, mo, k2, mi, nio, ni, kk)
            outer = sch.fuse(batch, no, mo)
        else:
            mo, mi = sch.split(m, factors=[None, mr])
            sch.reorder(no, mo, k2, mi, nio, ni, kk)
            outer = sch.fuse(no, mo)
        parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, ACC_SCOPE)
        sch.reverse_compute_at(acc, outer, preserve_unit_loops=True)
        attach_epilogue(sch, [main, acc], kernel.after, outer)
        sch.decompose_reduction(main, k2)
        sch.tensorize(ni, intrin)
        sch.unroll(mi)
        sch.unroll(nio)
        return sch
