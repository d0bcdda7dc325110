"""Backends lower an fxpress `Graph` to something that runs.

``eager`` runs the graph in PyTorch (the reference oracle); ``tvm`` compiles it
through Apache TVM to native code. Only ``fxpress.backends.tvm`` imports tvm.
"""
