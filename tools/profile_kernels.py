"""Per-kernel time of a compiled fxpress module, from the Relax VM's instrument hook.

    python -m tools.profile_kernels resnet18|minilm-b1|minilm-b8 [--threads N] [--int8]

Prints the kernels sorted by total time, with call counts and share, so kernel
work goes where the time is. Timings include the VM's per-call overhead.
"""

from __future__ import annotations

import argparse
import collections
import time

import tvm
from tvm import relax


def profile(compiled, inputs, repeats: int = 3) -> list[tuple[str, float, int]]:
    from fxpress.runtime.module import set_num_threads

    if compiled.num_threads:
        set_num_threads(compiled.num_threads)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    starts: dict[str, float] = {}

    def instrument(func, name, before, ret, *args):
        if before:
            starts[name] = time.perf_counter()
        else:
            totals[name] += time.perf_counter() - starts.pop(name)
            counts[name] += 1
        return 0

    args = [tvm.runtime.tensor(x.numpy()) for x in inputs]
    vm["main"](*args, *compiled.params)
    vm.set_instrument(tvm.runtime.convert(instrument))
    for _ in range(repeats):
        vm["main"](*args, *compiled.params)
    return sorted(((k, v / repeats, counts[k] // repeats) for k, v in totals.items()), key=lambda r: -r[1])


def main() -> None:
    import fxpress
    from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe
    from tools.bench.cases import make_cases

    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=["resnet18", "minilm-b1", "minilm-b8", "digits-cnn"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--int8", action="store_true", help="the benchmark's fxpress-int8 pipeline instead of fp32")
    args = parser.parse_args()
    case = make_cases()[args.model]
    model, inputs = case.load()
    if args.int8:
        observe = Observe(per_channel=True, weight_reduce_range=True, dynamic=case.dynamic)
        passes = [FoldBatchNorm(), observe, Calibrate(data=case.calibration()), FoldQDQ()]
        graph = fxpress.optimize(fxpress.capture(model, inputs), passes)
    else:
        graph = fxpress.optimize(fxpress.capture(model, inputs), "default")
    compiled = fxpress.compile(graph, target="x86", num_threads=args.threads)
    rows = profile(compiled, inputs)
    total = sum(r[1] for r in rows)
    print(f"total {total * 1e3:.2f} ms")
    for name, secs, n in rows[:60]:
        print(f"{secs * 1e3:9.3f} ms {100 * secs / total:5.1f}% x{n:<3} {name}")


if __name__ == "__main__":
    main()
