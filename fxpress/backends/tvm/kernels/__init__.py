"""fxpress's own TVM schedule rules (dlight `ScheduleRule`s), one kernel family a file."""

from fxpress.backends.tvm.kernels.conv2d import CPUConv2d
from fxpress.backends.tvm.kernels.conv_prologue import CPUConvStemPrologue
from fxpress.backends.tvm.kernels.injective import CPUInjective
from fxpress.backends.tvm.kernels.int8_avx2 import CPUInt8MatmulAVX2
from fxpress.backends.tvm.kernels.int8_conv_avx2 import CPUInt8Conv2dAVX2
from fxpress.backends.tvm.kernels.matmul import CPUMatmul
from fxpress.backends.tvm.kernels.pool import CPUSeparablePool
from fxpress.backends.tvm.kernels.rows import CPURowReduction

__all__ = [
    "CPUConv2d",
    "CPUConvStemPrologue",
    "CPUInjective",
    "CPUInt8Conv2dAVX2",
    "CPUInt8MatmulAVX2",
    "CPUMatmul",
    "CPURowReduction",
    "CPUSeparablePool",
]
