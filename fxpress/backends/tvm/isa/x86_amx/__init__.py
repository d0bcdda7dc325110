"""x86 with AMX-INT8: ``tdpbusd`` tile kernels (spec.py defines the ISA)."""
