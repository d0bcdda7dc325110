"""The AMX GEMM as a hand-written TIR PrimFunc: ``C[M, N] s32 = A[M, K] u8|s8 x W[N, K]ᵀ s8``.

The same builder emits the bf16 GEMM ``C[M, N] f32 = A[M, K] bf16 x W[N, K]ᵀ
bf16`` (``tdpbf16ps``, fp32 accumulation; A and W hold bf16 bits as uint16,
W packed in pairs, layout.py): every tile is a byte for byte the int8 one,
a K step of 64 bytes being 32 bf16 values.

Why by hand: TVM 0.27 has no AMX schedule, and ``tensorize`` over a
32x32-block intrinsic reached 1600-1800 GOP/s where straight-line TIR with
the tile intrinsics (tiles.py) reaches 2300-2900 on one core. The function is
built per shape (M, N, K static) with the IRBuilder:

- **register blocking 2x2**: a 32x32 output block is four 16x16 int32 tiles
  (tmm0..3, tile ``2r + s`` for row tile r, column tile s), fed per K step
  by two A tiles (tmm4, 5: 16 rows x `kc` bytes, row stride K) and two B
  tiles (tmm6, 7: ``kc/4`` rows x 64 bytes of the packed panel, layout.py),
  four ``tdpbusd`` (``tdpbssd`` for int8 A) per two A and two B loads;
- **loop order**: panels are taken in groups whose weights fit in L2
  (`L2_WEIGHT_BYTES`); per group, each 32-row block of A stays in L1 while
  the group's panels pass under it (A-block outer was 1.8x faster than
  panel outer at 1024^3 and 7 % at 128x1536x384 in the reference probe);
- **ragged edges by tile shape**: the last block row (M % 32 rows) and
  column (N % 32 columns) use tiles with fewer rows / bytes per row, set by
  their own tile configuration, so nothing is read or written outside A and
  C; a block with 16 or fewer edge rows or columns uses one tile on that
  side. ``K`` must be a multiple of 4; the K step `kc` is the largest
  multiple of 4 up to 64 dividing K (64, full speed, whenever 64 divides K);
- **threads**: with ``threads > 1`` a parallel loop of that many chunks
  splits the axis with more blocks; each chunk loads its own tile
  configuration (it is per thread) once per block shape and releases the
  tiles at its end.

Blocks with the same tile shapes (a "kind": full, M edge, N edge, corner)
run together, so a chunk loads at most four configurations. The int32
result leaves the tiles in `GemmBuilder._store_block`; a fused epilogue
(requantization: int32 + bias, per-channel fixed-point multiply and shift,
int8) replaces that method: store the four tiles into a 32x32 int32 scratch
and run the epilogue over it as vectors, writing C in the epilogue's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from tvm import tirx
from tvm.ir import Expr
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from fxpress.backends.tvm.isa.x86_amx import tiles
from fxpress.backends.tvm.isa.x86_amx.layout import BF16_GROUP, GROUP, PANEL, check_k, packed_shape

BLOCK = 32  # output rows (and columns) per register block: 2 x 16
TILE = 16
L2_WEIGHT_BYTES = 1 << 20  # packed weights per panel group (half an SPR core's 2 MiB L2)
A_TILES, B_TILES = 4, 6  # first tile register of the A and B tiles; C tiles are 0..3

Bound = int | Expr  # a block index: static, or symbolic in the parallel chunk
Tiles = tuple[int, ...]  # the extents of a block's tiles along one axis


@dataclass(frozen=True)
class GemmShape:
    """A GEMM problem: ``C[m, n] = A[m, k] x W[n, k]ᵀ``, A uint8 (int8 if `signed_a`), W int8.

    With `bf16`, A and W are bf16 (their bits as uint16) and C float32.
    """

    m: int
    n: int
    k: int
    threads: int = 1
    signed_a: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.m < 1 or self.n < 1 or self.threads < 1 or (self.bf16 and self.signed_a):
            raise ValueError(f"bad AMX GEMM shape {self}")
        check_k(self.k, self.group)

    @property
    def group(self) -> int:
        """Values of K per 4-byte group: 4 int8 or 2 bf16."""
        return BF16_GROUP if self.bf16 else GROUP

    @property
    def elem_bytes(self) -> int:
        return 2 if self.bf16 else 1

    @property
    def default_name(self) -> str:
        a = "bf16bf16" if self.bf16 else ("s8" if self.signed_a else "u8") + "s8"
        return f"fx_amx_gemm_{a}_{self.m}x{self.n}x{self.k}_t{self.threads}"

    @cached_property
    def k_step(self) -> int:
        """Bytes of K per tile step: the largest multiple of 4 up to 64 that divides K's bytes."""
        return next(s for s in range(tiles.MAX_COLSB, 0, -4) if self.k * self.elem_bytes % s == 0)

    @cached_property
    def panels_per_group(self) -> int:
        return max(1, L2_WEIGHT_BYTES // (PANEL * self.k * self.elem_bytes))


@dataclass(frozen=True)
class Segment:
    """Blocks ``[lo, hi)`` along one axis whose tiles have the same extents (rows or int32 columns)."""

    lo: int
    hi: int
    extents: Tiles


def segments(size: int) -> list[Segment]:
    """The full 32-blocks of an axis of `size`, then its ragged last block (if any)."""
    full, rest = divmod(size, BLOCK)
    out = [Segment(0, full, (TILE, TILE))] if full else []
    if rest:
        edge = (rest,) if rest <= TILE else (TILE, rest - TILE)
        out.append(Segment(full, full + 1, edge))
    return out


def _max(a: Bound, b: Bound) -> Bound:
    return max(a, b) if isinstance(a, int) and isinstance(b, int) else tirx.max(a, b)


def _min(a: Bound, b: Bound) -> Bound:
    return min(a, b) if isinstance(a, int) and isinstance(b, int) else tirx.min(a, b)


@contextmanager
def _guard(cond: bool | Expr) -> Iterator[None]:
    """Emit the body under ``if cond`` when `cond` is symbolic, as it is when it is True."""
    if isinstance(cond, bool):
        yield
        return
    with T.If(cond), T.Then():
        yield


class GemmBuilder:
    """Emits the PrimFunc for one `GemmShape` (see the module doc); one instance per function."""

    def __init__(self, shape: GemmShape) -> None:
        self.shape = shape
        self.a: Any = None  # the A, W and C buffers, bound in build()
        self.w: Any = None
        self.c: Any = None

    def build(self, name: str | None = None) -> tirx.PrimFunc:
        s = self.shape
        name = name or s.default_name
        with IRBuilder() as ib, T.prim_func():
            T.func_name(name)
            T.func_attr({"global_symbol": name, "tirx.noalias": True})
            a_dtype = "uint16" if s.bf16 else ("int8" if s.signed_a else "uint8")
            self.a = T.arg("A", T.Buffer((s.m, s.k), a_dtype))
            self.w = T.arg("W", T.Buffer(packed_shape(s.n, s.k, s.group), "uint16" if s.bf16 else "int8"))
            self.c = T.arg("C", T.Buffer((s.m, s.n), "float32" if s.bf16 else "int32"))
            self._body()
        return ib.get()

    def _body(self) -> None:
        s = self.shape
        m_blocks, n_blocks = -(-s.m // BLOCK), -(-s.n // BLOCK)
        split_n = n_blocks >= m_blocks
        total = n_blocks if split_n else m_blocks
        if s.threads == 1:
            self._chunk(0, total, split_n)
            return
        with T.parallel(0, s.threads) as ch:
            self._chunk(ch * total // s.threads, (ch + 1) * total // s.threads, split_n)

    def _chunk(self, lo: Bound, hi: Bound, split_n: bool) -> None:
        """All blocks whose index on the split axis lies in ``[lo, hi)``, kind by kind."""
        s = self.shape
        for mseg in segments(s.m):
            for nseg in segments(s.n):
                seg = nseg if split_n else mseg
                seg_lo, seg_hi = _max(seg.lo, lo), _min(seg.hi, hi)
                nonempty = seg_lo < seg_hi
                if nonempty is False:
                    continue
                with _guard(nonempty):
                    tiles.load_config(self._config(mseg.extents, nseg.extents))
                    if split_n:
                        self._kind(mseg.lo, mseg.hi, seg_lo, seg_hi, mseg.extents, nseg.extents)
                    else:
                        self._kind(seg_lo, seg_hi, nseg.lo, nseg.hi, mseg.extents, nseg.extents)
        tiles.release()

    def _config(self, rows: Tiles, cols: Tiles) -> bytes:
        """Tile shapes for blocks with row tiles `rows` and int32 column tiles `cols`."""
        kc = self.shape.k_step
        shapes: list[tiles.TileShape | None] = [None] * tiles.NUM_TILES
        for r, rr in enumerate(rows):
            shapes[A_TILES + r] = (rr, kc)
            for s_, cc in enumerate(cols):
                shapes[2 * r + s_] = (rr, 4 * cc)
        for s_, cc in enumerate(cols):
            shapes[B_TILES + s_] = (kc // 4, 4 * cc)
        return tiles.tile_config(shapes)

    def _kind(self, m_lo: Bound, m_hi: Bound, n_lo: Bound, n_hi: Bound, rows: Tiles, cols: Tiles) -> None:
        """Blocks ``[m_lo, m_hi) x [n_lo, n_hi)`` of one tile shape: panel groups, then A blocks, then panels."""
        g = self.shape.panels_per_group
        span = n_hi - n_lo
        groups = -(-span // g) if isinstance(span, int) else tirx.floordiv(span + g - 1, g)
        with T.serial(0, groups) as go, T.serial(m_lo, m_hi) as i:
            first = n_lo + go * g
            with T.serial(first, _min(first + g, n_hi)) as j:
                self._block(i, j, rows, cols)

    def _block(self, i: Expr, j: Expr, rows: Tiles, cols: Tiles) -> None:
        """One output block: zero the C tiles, accumulate over K, store."""
        s, kc = self.shape, self.shape.k_step
        pairs = [(r, c) for r in range(len(rows)) for c in range(len(cols))]
        for r, c in pairs:
            tiles.zero(2 * r + c)
        eb = s.elem_bytes
        with T.serial(0, s.k * eb // kc) as ko:
            for r in range(len(rows)):
                tiles.load(A_TILES + r, T.address_of(self.a[i * BLOCK + TILE * r, ko * (kc // eb)]), s.k * eb)
            for c in range(len(cols)):
                tiles.load(B_TILES + c, T.address_of(self.w[j, ko * (kc // 4), TILE * c, 0]), PANEL * 4)
            for r, c in pairs:
                if s.bf16:
                    tiles.dot_bf16(2 * r + c, A_TILES + r, B_TILES + c)
                else:
                    tiles.dot(2 * r + c, A_TILES + r, B_TILES + c, signed_a=s.signed_a)
        self._store_block(i, j, pairs)

    def _store_block(self, i: Expr, j: Expr, pairs: list[tuple[int, int]]) -> None:
        """Write the block's int32 tiles to C (where a fused epilogue would go)."""
        for r, c in pairs:
            tiles.store(2 * r + c, T.address_of(self.c[i * BLOCK + TILE * r, j * BLOCK + TILE * c]), 4 * self.shape.n)


def amx_gemm(
    m: int, n: int, k: int, *, threads: int = 1, signed_a: bool = False, bf16: bool = False, name: str | None = None
) -> tirx.PrimFunc:
    """The PrimFunc ``name(A[m, k], Wp, C[m, n])`` with Wp = `layout.pack_weight` (W[n, k]).

    `bf16`: A and W bf16 bits (uint16), C float32 (``tdpbf16ps``).

    Its ``global_symbol`` is `name`, by default one that names the shape and
    threads (``fx_amx_gemm_u8s8_128x1536x384_t1``): TVM 0.27 silently lets
    two functions of one module share a symbol, so each must be unique.
    """
    return GemmBuilder(GemmShape(m, n, k, threads, signed_a, bf16)).build(name)
