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

The rule itself is ISA-neutral (`CPUInt8Gemm`): a `MicroKernels` table says
which intrinsic computes a block, keyed by (activation dtype, weight dtype,
lanes L), what the CPU must have and which register tiles fit. Panels of L =
16 (``B[N/16, K/V, 16, V]``, ``C[m.., N/16, 16]``) take the same TE and rule;
isa/x86_vnni registers vpdpbusd micro-kernels for L = 8 and 16 (zmm).
`CPUInt8MatmulAVX2` is the rule with this file's AVX2 table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from tvm import DataType, s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.s_tir.dlight.base import get_extent
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_cpu_has_features

from fxpress.backends.tvm.kernels.base import (
    ACC_SCOPE,
    FxpressCPURule,
    Kernel,
    attach_epilogue,
    find_kernel,
    is_multiply_accumulate,
    parallel_if_worth_it,
    vector_lanes,
    work,
)

INTRIN = "fx_avx2_pmaddwd_8x2"
INTRIN_U8S8 = "fx_avx2_pmaddubsw_8x4"
ROW_GROUP = "fxpress.row_group"  # block annotation: rows that share one B (a batched matmul's rows per batch)


def description(a_dtype: str, b_dtype: str, v: int, lanes: int = 8) -> tirx.PrimFunc:
    """``C[i] += sum_k A[k] * B[i, k]`` over `lanes` int32 lanes and `v` values per lane: what a micro-kernel computes.

    Every micro-kernel (AVX2 here, VNNI in isa/x86_vnni) registers this description.
    """

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((v,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, v), b_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=ACC_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:v], B[0:lanes, 0:v])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, v):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def broadcast_group(a: tirx.Buffer, dtype: str, vector: str) -> tirx.PrimExpr:
    """The `a` group (V values, 32 bits) broadcast to every int32 lane of a `vector` (``uint8x32``: 8 lanes)."""
    bits = DataType(vector).bits * DataType(vector).lanes
    return T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], dtype), dtype="int32"), bits // 32), dtype=vector)


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
            broadcast_group(A, "int16x2", "int16x16"),
            B.vload([0, 0], dtype="int16x16"),
            dtype="int32x8",
        )


TensorIntrin.register(INTRIN, description("int16", "int16", 2), _impl, override=True)


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
                broadcast_group(A, "uint8x4", "uint8x32"),
                B.vload([0, 0], dtype="int8x32"),
                dtype="int16x16",
            ),
            T.broadcast(T.int16(1), 16),
            dtype="int32x8",
        )


TensorIntrin.register(INTRIN_U8S8, description("uint8", "int8", 4), _impl_u8s8, override=True)

# The operand dtypes and lane width of each micro-kernel: (activation, weight, lanes) -> intrinsic.
MICRO_KERNELS = {("int16", "int16", 8): INTRIN, ("uint8", "int8", 8): INTRIN_U8S8}


@dataclass(frozen=True)
class MicroKernels:
    """One instruction set's micro-kernels and register-tile policy, for the int8 GEMM and conv rules.

    The rules are the same for every x86 instruction set; what differs is
    which intrinsic computes a block (by its operand dtypes and lane width),
    what the CPU must have, and how many accumulators fit its registers.
    """

    name: str
    intrinsics: Mapping[tuple[str, str, int], str]  # (activation dtype, weight dtype, lanes) -> TensorIntrin
    features: tuple[str, ...]  # LLVM CPU features the target needs (all of them)
    registers: int = 16  # vector registers
    temporaries: int = 3  # registers a step needs besides the accumulators and the B vectors
    # GEMM tiles (rows MR, vectors NR), tried in order: the first whose MR divides the rows and NR the panels
    gemm_tiles: tuple[tuple[int, int], ...] = tuple((mr, nr) for nr in (2, 1) for mr in (6, 5, 4, 3, 7, 2, 1))
    # conv tiles: output columns XR (the first that divides the width), then vectors NR where `fits`
    conv_columns: tuple[int, ...] = (6, 4, 7, 5, 3, 2, 1)
    conv_vectors: tuple[int, ...] = (2, 1)

    def intrinsic(self, stmt: tirx.Stmt) -> str | None:
        """The intrinsic for a GEMM/conv block's (activation, weight) read dtypes and lane width, if one fits."""
        dtypes = tuple(str(r.source.dtype) for r in stmt.reads)
        if len(dtypes) != 2 or len(stmt.writes) != 1:
            return None
        lanes = stmt.writes[0].source.shape[-1]
        if not isinstance(lanes, tirx.IntImm | int):
            return None
        lanes = int(lanes)
        return self.intrinsics.get((*dtypes, lanes)) or self.intrinsics.get((*dtypes[::-1], lanes))

    def available(self, target: Target) -> bool:
        return llvm_cpu_has_features(list(self.features), target)

    def fits(self, rows: int, vectors: int) -> bool:
        """A rows x vectors accumulator tile, its B vectors and the temporaries fit the registers."""
        return rows * vectors + vectors + self.temporaries <= self.registers


# AVX2: 16 ymm registers; vpmaddubsw + vpmaddwd need a broadcast, a product and the ones vector.
# Conv tiles measured (interleaved, ResNet-18): the 7-wide stages run about 20 % faster with
# 7 x 1 tiles than with 7 x 2, which spills (`fits` refuses it); the 14-wide ones break even.
AVX2 = MicroKernels("avx2", MICRO_KERNELS, ("avx2",))


def micro_kernel(stmt: tirx.Stmt, kernels: MicroKernels = AVX2) -> str | None:
    """The intrinsic of `kernels` for a GEMM/conv block's read dtypes and lane width, if one fits."""
    return kernels.intrinsic(stmt)


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


def _is_gemm(kernels: MicroKernels) -> Callable[[s_tir.Schedule, s_tir.schedule.SBlockRV], bool]:
    """``C[m.., n/L, n%L] += A[m.., k/V, k%V] * B[n/L, k/V, n%L, k%V]`` (a micro-kernel of `kernels`), int32 out."""

    def accept(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
        stmt = sch.get(block)
        n = len(stmt.iter_vars)
        return (
            n >= 4
            and is_multiply_accumulate(stmt, "S" * (n - 2) + "RR")
            and stmt.writes[0].source.dtype == "int32"
            and kernels.intrinsic(stmt) is not None
            and any(len(r.source.shape) == 4 for r in stmt.reads)
        )

    return accept


def divides(d: int, extent: object) -> bool:
    """`d` divides a static `extent` (1 divides anything, symbolic ones too)."""
    return d == 1 or (isinstance(extent, int) and extent % d == 0)


def tighten_epilogue(sch: s_tir.Schedule, blocks: list[s_tir.schedule.SBlockRV], lanes: int) -> None:
    """Element-wise epilogue blocks under a tile: each inlined into its consumer where TVM can, the rest vectorized.

    Left apart, each stage of an epilogue chain (attention's float scaling, then
    ``* 1/sqrt(d)``, then the mask add) wrote a full-size intermediate a scalar
    at a time: on MiniLM at batch 8 that made the batched int8 matmul 10x
    slower than its micro-kernel.
    """
    kept = []
    for block in blocks[:-1]:
        try:
            sch.compute_inline(block)
        except Exception:  # read by more than the next stage, or not inlinable: stays a stage of its own
            kept.append(block)
    for block in [*kept, *blocks[-1:]]:
        inner = sch.get_loops(block)[-1]
        extent = get_extent(sch, inner)
        if isinstance(extent, int) and extent % lanes == 0 and extent >= lanes:
            _, vec = sch.split(inner, factors=[None, lanes])
            sch.vectorize(vec)


class MicroKernelRule(FxpressCPURule):
    """A rule that tensorizes with one ISA's `MicroKernels`; it looks for its block only where the target has them."""

    def __init__(self, micro_kernels: MicroKernels = AVX2) -> None:
        self.micro_kernels = micro_kernels

    def find(
        self, func: tirx.PrimFunc, target: Target, accepts: Callable[[MicroKernels], Callable[..., bool]]
    ) -> Kernel | None:
        """`func`'s kernel if the target has the micro-kernels and `accepts(micro_kernels)` takes its block."""
        if not self.micro_kernels.available(target):
            return None
        return find_kernel(func, accepts(self.micro_kernels))


class CPUInt8Gemm(MicroKernelRule):
    """Tensorized int8 GEMM for `quantized_linear` / `quantized_matmul`, with the micro-kernels of one ISA.

    `micro_kernels` picks the intrinsic per block (operand dtypes, lane width)
    and the register tile: `AVX2` (vpmaddubsw / vpmaddwd, 8 lanes) by default,
    isa/x86_vnni's tables for vpdpbusd (8 or 16 lanes).
    """

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        kernels = self.micro_kernels
        kernel = self.find(func, target, _is_gemm)
        if kernel is None:
            return None
        sch, main = kernel.sch, kernel.main
        stmt = sch.get(main)
        intrin = kernels.intrinsic(stmt)
        macs = work(sch, main)
        *spatial, k2, kk = sch.get_loops(main)
        # one panel (N <= L): normalization dropped the unit panel loop, which the tile then does without
        group_index = stmt.writes[0].region[-2].min
        grouped = any(group_index.same_as(iv.var) for iv in stmt.iter_vars)
        *lead, n8, ni = spatial if grouped else [*spatial[:-1], None, spatial[-1]]
        m = sch.fuse(*lead) if len(lead) > 1 else lead[0] if lead else None
        if m is None:
            return None
        rows = get_extent(sch, m)
        # A batched matmul's B panel changes every `group` rows: a tile inside one batch shares its B loads.
        group = int(sch.get(main).annotations.get(ROW_GROUP, 0))
        groups = get_extent(sch, n8) if n8 is not None else 1
        if not isinstance(rows, int):
            return None
        tile = ((r, v) for r, v in kernels.gemm_tiles if divides(r, rows) and group % r == 0 and divides(v, groups))
        mr, nr = next(tile, (None, None))
        if mr is None or nr is None:
            return None
        no, nio = sch.split(n8, factors=[None, nr]) if n8 is not None else (None, None)
        if group > 1 and rows > group and rows % group == 0:
            # one batch at a time: its A rows and B panel stay in cache while every column block passes
            batch, mo, mi = sch.split(m, factors=[None, group // mr, mr])
            outer_loops = [batch, no, mo]
        else:
            mo, mi = sch.split(m, factors=[None, mr])
            outer_loops = [no, mo]
        outer_loops = [lp for lp in outer_loops if lp is not None]
        sch.reorder(*outer_loops, *[lp for lp in (k2, mi, nio, ni, kk) if lp is not None])
        outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
        parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, ACC_SCOPE)
        sch.reverse_compute_at(acc, outer, preserve_unit_loops=True)
        moved = attach_epilogue(sch, [main, acc], kernel.after, outer)
        tighten_epilogue(sch, [acc], vector_lanes(target, 32))  # the tile's write-back: vectors too
        tighten_epilogue(sch, moved, vector_lanes(target, 32))
        sch.decompose_reduction(main, k2)
        sch.tensorize(ni, intrin)
        sch.unroll(mi)
        if nio is not None:
            sch.unroll(nio)
        return sch


class CPUInt8MatmulAVX2(CPUInt8Gemm):
    """`CPUInt8Gemm` with the AVX2 micro-kernels (vpmaddubsw / vpmaddwd; see module docstring)."""
