"""AMX tile instructions as TIR statements, for kernels written with TVM's IRBuilder.

TVM has no ``x86_amx`` type, so the ``llvm.x86.*.internal`` intrinsics (which
pass tiles as values) fail LLVM verification. The plain intrinsics work: each
names its tile register as an ``i8`` immediate (tmm0..tmm7) and memory by
pointer, so a kernel allocates tile registers by hand and every statement
here is a ``void`` ``call_llvm_intrin``:

    ldtilecfg(cfg*)                  tile shapes (palette 1), see `tile_config`
    tilezero(t)                      t = 0
    tileloadd64(t, ptr, stride)      t = rows x colsb bytes at ptr, rows `stride` bytes apart
    tdpbusd(c, a, b) / tdpbssd       c[i, j] += sum_k a[i, 4k..4k+3] . b[k, 4j..4j+3] (u8|s8 x s8 -> s32)
    tdpbf16ps(c, a, b)               c[i, j] += sum_k a[i, 2k..2k+1] . b[k, 2j..2j+1] (bf16 x bf16 -> f32)
    tilestored64(t, ptr, stride)     the reverse of tileloadd64
    tilerelease()                    back to the initial state (cheap context switches)

The configuration is per thread and loading it zeroes every tile, so a
kernel loads it once per parallel chunk and per change of tile shapes, never
inside an accumulation. The emitters must be called inside an IRBuilder
``T.prim_func()`` frame; the process must have asked Linux for tile
permission first (`fxpress.runtime.amx.request_amx_permission`).
"""

from __future__ import annotations

from collections.abc import Sequence

from tvm import tirx
from tvm.ir import Expr
from tvm.script.ir_builder import tirx as T

NUM_TILES = 8
MAX_ROWS = 16
MAX_COLSB = 64  # bytes per tile row
CONFIG_BYTES = 64
AMX_MATTR = ("+amx-tile", "+amx-int8", "+amx-bf16")  # LLVM features the tile intrinsics need

TileShape = tuple[int, int]  # (rows, bytes per row)


def tile_config(shapes: Sequence[TileShape | None]) -> bytes:
    """The 64-byte ``ldtilecfg`` operand (palette 1) giving tile t the shape `shapes[t]` (None: unused).

    Layout: byte 0 palette, bytes 16 + 2t the row width of tile t in bytes
    (u16, little endian), byte 48 + t its row count.
    """
    if len(shapes) > NUM_TILES:
        raise ValueError(f"AMX has {NUM_TILES} tiles, {len(shapes)} shapes given")
    cfg = bytearray(CONFIG_BYTES)
    cfg[0] = 1
    for t, shape in enumerate(shapes):
        if shape is None:
            continue
        rows, colsb = shape
        if not (0 < rows <= MAX_ROWS and 0 < colsb <= MAX_COLSB):
            raise ValueError(f"tile {t}: {rows} rows x {colsb} bytes is not a valid AMX tile shape")
        cfg[16 + 2 * t : 18 + 2 * t] = colsb.to_bytes(2, "little")
        cfg[48 + t] = rows
    return bytes(cfg)


def _intrin(name: str, *args: Expr) -> None:
    T.evaluate(tirx.call_llvm_intrin("void", f"llvm.x86.{name}", *args))


def _tile(t: int) -> Expr:
    if not 0 <= t < NUM_TILES:
        raise ValueError(f"tile register tmm{t} does not exist")
    return tirx.const(t, "int8")


def load_config(config: bytes) -> None:
    """Write `config` (from `tile_config`) into a thread-local buffer and ``ldtilecfg`` it."""
    buf = T.decl_buffer((CONFIG_BYTES,), "uint8", scope="local")
    for i, byte in enumerate(config):
        T.buffer_store(buf, tirx.const(byte, "uint8"), [i])
    _intrin("ldtilecfg", T.address_of(buf[0]))


def zero(t: int) -> None:
    _intrin("tilezero", _tile(t))


def load(t: int, ptr: Expr, stride_bytes: int) -> None:
    _intrin("tileloadd64", _tile(t), ptr, tirx.const(stride_bytes, "int64"))


def store(t: int, ptr: Expr, stride_bytes: int) -> None:
    _intrin("tilestored64", _tile(t), ptr, tirx.const(stride_bytes, "int64"))


def dot(c: int, a: int, b: int, *, signed_a: bool = False) -> None:
    """``c += a . b`` over int8 groups of four: ``tdpbusd`` (u8 a) or ``tdpbssd`` (s8 a), s8 b, s32 c."""
    _intrin("tdpbssd" if signed_a else "tdpbusd", _tile(c), _tile(a), _tile(b))


def dot_bf16(c: int, a: int, b: int) -> None:
    """``c += a . b`` over bf16 pairs: ``tdpbf16ps`` (bf16 a, b; f32 c)."""
    _intrin("tdpbf16ps", _tile(c), _tile(a), _tile(b))


def release() -> None:
    _intrin("tilerelease")
