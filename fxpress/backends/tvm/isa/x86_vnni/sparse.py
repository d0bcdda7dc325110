"""The VNNI micro-kernels of the int8 block-sparse linear (kernels/bsr_int8.py): one ``vpdpbusd`` per quad.

The block-sparse kernel packs the four activations one quad of kept columns
multiplies into the 32 bits of an int32 (``P = x0 | x1 << 8 | x2 << 16 | x3 << 24``,
uint8 each), so its step reads an int32, not four bytes:

    C[lane] += sum_q ((P >> 8q) & 255) * B[lane, q]      (q < 4; B int8)

which is exactly ``vpdpbusd(C, broadcast(P), B)``: the instruction reads each
int32 lane of its first source as four uint8 values. Registered under its own
names, for 16 lanes (zmm) and 8 lanes (ymm, EVEX with AVX512-VL or VEX on
AVX-VNNI CPUs), with ``override=True``; the operands are passed as byte
vectors, as LLVM 22 declares them (see intrin.py).
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from fxpress.backends.tvm.kernels.base import ACC_SCOPE

SPARSE_VPDPBUSD_16 = "fx_vnni_sparse_vpdpbusd_16x4"
SPARSE_VPDPBUSD_8 = "fx_vnni_sparse_vpdpbusd_8x4"


def _description(lanes: int) -> tirx.PrimFunc:
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((1,), "int32", offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=ACC_SCOPE),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:1], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.bitwise_and(T.shift_right(A[0], vk * 8), 255) * T.Cast("int32", B[vi, vk])

    return desc


def _implementation(llvm_name: str, lanes: int) -> tirx.PrimFunc:
    bytes_ = f"{lanes * 4}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((1,), "int32", offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=ACC_SCOPE),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:1], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name),
                C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(A[0], lanes), dtype=f"uint8x{bytes_}"),
                B.vload([0, 0], dtype=f"int8x{bytes_}"),
                dtype=f"int32x{lanes}",
            )

    return impl


TensorIntrin.register(
    SPARSE_VPDPBUSD_16, _description(16), _implementation("llvm.x86.avx512.vpdpbusd.512", 16), override=True
)
TensorIntrin.register(
    SPARSE_VPDPBUSD_8, _description(8), _implementation("llvm.x86.avx512.vpdpbusd.256", 8), override=True
)
