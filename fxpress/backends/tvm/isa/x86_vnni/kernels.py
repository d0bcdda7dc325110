"""The VNNI micro-kernel tables and the int8 GEMM / conv rules instantiated with them.

The rules are kernels/int8_avx2.py's `CPUInt8Gemm` and kernels/
int8_conv_avx2.py's `CPUInt8Conv2d`; what VNNI changes is the `MicroKernels`
table: which intrinsic computes a block and how large a register tile fits.

- `VNNI_KERNELS` (AVX512-VNNI, 32 vector registers): ``vpdpbusd`` for u8s8
  blocks of 16 lanes (zmm) and of 8 lanes (ymm, where the AVX2 table would
  take ``vpmaddubsw`` + ``vpmaddwd``), ``vpdpwssd`` for s16 blocks. A step
  needs one temporary at most (the A broadcast; ``vpdpbusd`` can also
  broadcast from memory), so a 16-lane GEMM tile is up to 8 rows x 3 vectors
  (24 accumulators + 3 B vectors).
- `AVX_VNNI_KERNELS` (AVX-VNNI without AVX-512: 16 ymm registers): the same
  instructions, VEX-encoded, 8 lanes only.
"""

from __future__ import annotations

from fxpress.backends.tvm.isa.x86_vnni.intrin import VPDPBUSD_8, VPDPBUSD_16, VPDPWSSD_8, VPDPWSSD_16
from fxpress.backends.tvm.kernels.int8_avx2 import CPUInt8Gemm, MicroKernels
from fxpress.backends.tvm.kernels.int8_conv_avx2 import CPUInt8Conv2d


def register_tiles(registers: int, temporaries: int, rows: int = 8, vectors: int = 4) -> tuple[tuple[int, int], ...]:
    """Every GEMM tile (MR rows x NR vectors) whose accumulators, B vectors and temporaries fit the registers.

    Most accumulators first (they hide ``vpdpbusd``'s latency and amortize the
    loads), then most rows (measured here, one core: 8 x 3 ran 632-672 GOP/s
    where 6 x 4 ran 607-658 at 384 x 384 x 1536 and 384 x 1536 x 384).
    """
    tiles = [
        (mr, nr) for mr in range(1, rows + 1) for nr in range(1, vectors + 1) if mr * nr + nr + temporaries <= registers
    ]
    return tuple(sorted(tiles, key=lambda t: (-t[0] * t[1], -t[0])))


VNNI_KERNELS = MicroKernels(
    "avx512-vnni",
    {
        ("uint8", "int8", 16): VPDPBUSD_16,
        ("uint8", "int8", 8): VPDPBUSD_8,
        ("int16", "int16", 16): VPDPWSSD_16,
        ("int16", "int16", 8): VPDPWSSD_8,
    },
    features=("avx512vnni", "avx512vl", "avx512bw"),
    registers=32,
    temporaries=1,
    gemm_tiles=register_tiles(32, 1),
    conv_columns=(7, 6, 8, 4, 5, 3, 2, 1),
    conv_vectors=(3, 2, 1),
)

AVX_VNNI_KERNELS = MicroKernels(
    "avx-vnni",
    {("uint8", "int8", 8): VPDPBUSD_8, ("int16", "int16", 8): VPDPWSSD_8},
    features=("avxvnni", "avx2"),
    registers=16,
    temporaries=1,
)


class CPUInt8GemmVNNI(CPUInt8Gemm):
    """`CPUInt8Gemm` with the AVX512-VNNI micro-kernels (`VNNI_KERNELS`)."""

    def __init__(self, micro_kernels: MicroKernels = VNNI_KERNELS) -> None:
        super().__init__(micro_kernels)


class CPUInt8Conv2dVNNI(CPUInt8Conv2d):
    """`CPUInt8Conv2d` with the AVX512-VNNI micro-kernels (`VNNI_KERNELS`)."""

    def __init__(self, micro_kernels: MicroKernels = VNNI_KERNELS) -> None:
        super().__init__(micro_kernels)
