"""VNNI micro-kernels: ``vpdpbusd`` / ``vpdpwssd`` as tensor intrinsics for the int8 GEMM and conv rules.

``vpdpbusd`` multiplies 4 uint8 activations by 4 int8 weights per int32 lane
and adds the sum to the lane, exactly (no int16 intermediate, unlike AVX2's
``vpmaddubsw``), so with VNNI every int8 layer can take the u8s8 form, one
instruction per vector instead of two. ``vpdpwssd`` is the same for int16
pairs (the s16 form of batched activation x activation matmuls).

Each intrinsic has the description every fxpress micro-kernel shares
(kernels/int8_avx2.py `description`: ``C[i] += sum_k A[k] * B[i, k]`` over L
lanes), registered under its own name with ``override=True``:

| name | LLVM intrinsic | operands | lanes |
|---|---|---|---|
| ``fx_vnni_vpdpbusd_16x4`` | ``llvm.x86.avx512.vpdpbusd.512`` | u8 x s8 | 16 (zmm) |
| ``fx_vnni_vpdpbusd_8x4`` | ``llvm.x86.avx512.vpdpbusd.256`` | u8 x s8 | 8 (ymm) |
| ``fx_vnni_vpdpwssd_16x2`` | ``llvm.x86.avx512.vpdpwssd.512`` | s16 x s16 | 16 (zmm) |
| ``fx_vnni_vpdpwssd_8x2`` | ``llvm.x86.avx512.vpdpwssd.256`` | s16 x s16 | 8 (ymm) |

The LLVM 22 bundled with TVM 0.27 declares the byte operands of ``vpdpbusd``
as ``<64 x i8>`` (``<32 x i8>`` at 256 bits) and those of ``vpdpwssd`` as
``<32 x i16>``: passing ``<16 x i32>`` (as TVM's own ``dot_16x4_vnni`` does)
fails LLVM verification. The 256-bit ones compile to the EVEX form with
AVX512-VL and to the VEX form (``{vex} vpdpbusd``) on AVX-VNNI CPUs without
AVX-512 (Alder Lake and later clients).
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from fxpress.backends.tvm.kernels.base import ACC_SCOPE
from fxpress.backends.tvm.kernels.int8_avx2 import broadcast_group, description

VPDPBUSD_16 = "fx_vnni_vpdpbusd_16x4"
VPDPBUSD_8 = "fx_vnni_vpdpbusd_8x4"
VPDPWSSD_16 = "fx_vnni_vpdpwssd_16x2"
VPDPWSSD_8 = "fx_vnni_vpdpwssd_8x2"


def _implementation(llvm_name: str, a_dtype: str, b_dtype: str, group: int, width: int) -> tirx.PrimFunc:
    """``C = llvm_name(C, broadcast(A group), B)`` over `width` int32 lanes, `group` values of A per lane.

    One expression: a name bound in TVMScript becomes a local allocation, which
    the host lowering turns into a workspace call per tile (see int8_avx2.py).
    """
    elem_bits = 8 if a_dtype.endswith("int8") else 16
    per_vector = width * 32 // elem_bits  # operand elements in one vector register
    a_group, a_vector = f"{a_dtype}x{group}", f"{a_dtype}x{per_vector}"
    b_vector, c_vector = f"{b_dtype}x{per_vector}", f"int32x{width}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((group,), a_dtype, offset_factor=1),
        B: T.Buffer((width, group), b_dtype, offset_factor=1),
        C: T.Buffer((width,), "int32", offset_factor=1, scope=ACC_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:width], A[0:group], B[0:width, 0:group])
            T.writes(C[0:width])
            C[T.ramp(T.int32(0), 1, width)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name),
                C.vload([0], dtype=c_vector),
                broadcast_group(A, a_group, a_vector),
                B.vload([0, 0], dtype=b_vector),
                dtype=c_vector,
            )

    return impl


def _register(name: str, llvm_name: str, a_dtype: str, b_dtype: str, group: int, width: int) -> None:
    impl = _implementation(llvm_name, a_dtype, b_dtype, group, width)
    TensorIntrin.register(name, description(a_dtype, b_dtype, group, width), impl, override=True)


_register(VPDPBUSD_16, "llvm.x86.avx512.vpdpbusd.512", "uint8", "int8", 4, 16)
_register(VPDPBUSD_8, "llvm.x86.avx512.vpdpbusd.256", "uint8", "int8", 4, 8)
_register(VPDPWSSD_16, "llvm.x86.avx512.vpdpwssd.512", "int16", "int16", 2, 16)
_register(VPDPWSSD_8, "llvm.x86.avx512.vpdpwssd.256", "int16", "int16", 2, 8)
