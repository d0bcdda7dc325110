"""fxpress.auto on the pretrained MNIST CNN (ccexam): within 0.2 points of fp32 on the test set.

    python examples/auto_mnist.py            # [--limit 10000] [--max-candidates 24]

The search's evaluation is test-set accuracy in percent (the acceptance bar
is stated on the test set; note that choosing on the test set makes its
number optimistic), its budget ``accuracy >= fp32 - 0.2``; calibration is 8
batches of 32 training digits; latency is one digit (1 x 1 x 28 x 28), one
thread, on the host's ISA, timed on the model captured at that shape (the
evaluated one has a dynamic batch). Methods: every default method but ``dynamic``
(float, bf16, int8, 4-bit weights, prune 25 %, 2:4 and 16x1 sparsity,
low-rank 0.5). At the end the best point, the plain int8 model
(``observe{per-channel=true},calibrate,fold-qdq``) and fp32 are compiled and
timed side by side (interleaved rounds, best of each) together with the
evaluated points within the floor that are smaller than plain int8 (the five
fastest by the search's latency), to find one that is also faster. Results: examples/results/auto_mnist.json (the search's JSON,
plot and per-layer table beside it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fxpress
from fxpress.auto import Method, default_methods, optimize_text
from fxpress.auto.latency import time_side_by_side
from fxpress.data.mnist import mnist
from fxpress.models.mnist_cnn import mnist_cnn, preprocess
from fxpress.reports.size import weight_sizes

RESULTS = Path(__file__).parent / "results"
PLAIN_INT8 = "observe{per-channel=true},calibrate,fold-qdq"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def test_accuracy(x: torch.Tensor, y: torch.Tensor, batch: int = 500):  # type: ignore[no-untyped-def]
    """The evaluation: percent of test digits classified right by the candidate graph (eager)."""

    def accuracy(graph: fxpress.Graph) -> float:
        with torch.no_grad():
            right = sum(
                int((graph(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
            )
        return 100.0 * right / len(x)

    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10000, help="test digits the evaluation uses")
    parser.add_argument("--max-candidates", type=int, default=24)
    parser.add_argument("--confirm", type=int, default=6)
    parser.add_argument("--cache", default=None, help="cache directory (default ~/.cache/fxpress/auto)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start, cpu0 = time.perf_counter(), time.process_time()
    test_images, test_labels = mnist("test")
    train_images, _ = mnist("train")
    x, y = preprocess(test_images[: args.limit]), torch.as_tensor(test_labels[: args.limit]).long()
    train = preprocess(train_images[:256])
    calibration = [(train[i : i + 32],) for i in range(0, 256, 32)]
    model = mnist_cnn()
    graph = fxpress.capture(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    static = fxpress.capture(model, (x[:1],))  # what is timed: one digit, static sizes
    evaluate = test_accuracy(x, y)
    fp32 = evaluate(graph)
    methods = [m for m in default_methods() if m.precision != "dynamic"]
    result = fxpress.auto(
        graph,
        calibration,
        evaluate=evaluate,
        budget=f"accuracy>={fp32 - 0.2:.4f}",
        methods=methods,
        weight_bits=(8, 4),
        latency_inputs=(x[:1],),
        latency_graph=static,
        threads=1,
        seed=0,
        max_candidates=args.max_candidates,
        confirm=args.confirm,
        cache_dir=args.cache,
    )
    result.save(RESULTS, "auto_mnist")
    (RESULTS / "auto_mnist.txt").write_text(result.text() + "\n")
    print(result.text())
    int8 = result.point("int8")
    assert result.best is not None and int8 is not None
    floor = fp32 - 0.2
    # (b): the points within the floor that are smaller than plain int8, timed side by side with it
    smaller = [p for p in result.points if p.accuracy >= floor and p.size_bytes < int8.size_bytes]
    smaller = sorted(smaller, key=lambda p: p.latency)[:5]
    models = {
        "best": optimize_text(graph, result.best.pipeline, calibration),
        "int8": optimize_text(graph, PLAIN_INT8, calibration),
    }
    models |= {f"smaller_{i}": optimize_text(graph, p.pipeline, calibration) for i, p in enumerate(smaller)}
    texts = {"best": result.best.pipeline, "int8": PLAIN_INT8} | {
        f"smaller_{i}": p.pipeline for i, p in enumerate(smaller)
    }
    timed = {k: optimize_text(static, t, [(x[:1],)]) for k, t in texts.items()}
    wall0, c0 = time.perf_counter(), time.process_time()
    timing = time_side_by_side({**timed, "fp32": static}, (x[:1],), target="x86", threads=1, repeats=10)
    side_cpu = (time.process_time() - c0) / (time.perf_counter() - wall0)
    faster = [i for i in range(len(smaller)) if timing[f"smaller_{i}"].ms < timing["int8"].ms]
    pick = smaller[min(faster, key=lambda i: timing[f"smaller_{i}"].ms)] if faster else None
    sizes = {k: weight_sizes(g).stored_bytes for k, g in {**models, "fp32": graph}.items()}
    accuracy = {k: evaluate(g) for k, g in models.items()} | {"fp32": fp32}
    summary = {
        "cpu": cpu_name(),
        "isa": result.isa,
        "threads": 1,
        "test_digits": len(x),
        "floor": round(floor, 4),
        "met": result.met,
        "search_s": round(result.search_s, 1),
        "search_cpu_per_wall": round(result.cpu_per_wall, 3),
        "best_pipeline": result.best.pipeline,
        "smaller_and_faster_pipeline": pick.pipeline if pick else None,
        "smaller_than_int8_pipelines": {f"smaller_{i}": p.pipeline for i, p in enumerate(smaller)},
        "accuracy_percent": accuracy,
        "stored_bytes": sizes,
        "ms_side_by_side": {k: round(t.ms, 4) for k, t in timing.items()},
        "cpu_per_wall_side_by_side": round(side_cpu, 3),
        "bar_smaller_and_faster_than_int8": pick is not None,
        "total_s": round(time.perf_counter() - start, 1),
        "total_cpu_per_wall": round((time.process_time() - cpu0) / (time.perf_counter() - start), 3),
        "methods": [m.label for m in methods if m != Method()],
    }
    (RESULTS / "auto_mnist_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
