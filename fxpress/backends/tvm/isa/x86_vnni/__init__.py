"""x86 with AVX512-VNNI: ``vpdpbusd`` int8 kernels, every int8 layer exact in the u8s8 form.

- spec.py: the ``x86-vnni`` ISA preset;
- intrin.py: the ``vpdpbusd`` / ``vpdpwssd`` tensor intrinsics (8 and 16 int32 lanes);
- kernels.py: the micro-kernel tables (`VNNI_KERNELS`, `AVX_VNNI_KERNELS`) and
  the int8 GEMM / direct-conv rules instantiated with them;
- int8.py: the int8 lowering (16-lane panels, u8s8 for every layer) and `VnniISA`;
- te_matmul.py: the u8s8 16-lane batched matmul of attention (run-time zero-point corrections);
- bench.py: a GEMM micro-benchmark (``python -m fxpress.backends.tvm.isa.x86_vnni.bench``).
"""
