"""Per-kernel time of a compiled fxpress module, from the Relax VM's instrument hook.

    python tools/profile_kernels.py resnet18|minilm-b1|minilm-b8 [--threads N]

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
    from fxpress.models import minilm, resnet

    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=["resnet18", "minilm-b1", "minilm-b8"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.model == "resnet18":
        model, inputs = resnet.resnet18(), (resnet.example_input(1, 224),)
    else:
        model, inputs = minilm.sentence_encoder(), minilm.example_inputs(1 if args.model == "minilm-b1" else 8, 128)
    graph = fxpress.optimize(fxpress.capture(model, inputs), "default")
    compiled = fxpress.compile(graph, target="x86", num_threads=args.threads)
    rows = profile(compiled, inputs)
    total = sum(r[1] for r in rows)
    print(f"total {total * 1e3:.2f} ms")
    for name, secs, n in rows[:25]:
        print(f"{secs * 1e3:9.3f} ms {100 * secs / total:5.1f}% x{n:<3} {name}")


if __name__ == "__main__":
    main()
