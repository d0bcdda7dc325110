"""fxpress's int8 graphs as ONNX (QDQ), run by ONNX Runtime and OpenVINO with their own int8 kernels.

    make data && python examples/export_onnx.py [--threads 1] [--out examples/results/export_onnx]

Two models, each quantized by the recipe of its quantize_* example and
written with ``fxpress.to_onnx`` (int8 layers as QuantizeLinear /
DequantizeLinear around the float op, per-channel int8 weights, uint8
activations with the calibrated scales):

- all-MiniLM-L6-v2 (examples/quantize_minilm.py: every linear and attention
  matmul int8, 7-bit weights, the six FFN down-projections dynamic per row,
  calibrated on the 64 calibration sentences): on the 336 held-out sentences
  (sequence 128), the cosine of ONNX Runtime's and OpenVINO's embeddings to
  fxpress's eager int8 graph (the reference ops) and to fp32;
- the ccexam MNIST CNN (examples/quantize_mnist.py: fold-bn, every conv and
  linear int8, calibrated on 512 training images): on the 10,000 test images,
  how often ONNX Runtime and OpenVINO predict what the eager int8 graph
  predicts, and their accuracy.

ONNX Runtime runs with all graph optimisations (its QDQ fusions: QGemm,
QLinearConv, MatMulIntegerToFloat), OpenVINO on its CPU plugin with the f32
precision hint for the layers left in float. The seconds are one pass over
the data on a shared machine, not a benchmark (tools/bench is). Results go to
<out>.json and <out>.md with the CPU they ran on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fxpress
from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe
from fxpress.runtime.cpu import host_cpu_model

RESULTS = Path(__file__).parent / "results"
FFN_OUT = r"layer\.\d+\.output\.dense"  # examples/quantize_minilm.py's dynamic layers


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def openvino_model(path: Path, threads: int) -> Any:
    """OpenVINO's CPU plugin on the same file, or None when openvino is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    return ov.Core().compile_model(str(path), "CPU", config)


def timed(fn: Any, batches: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = np.concatenate([np.asarray(fn(*b)) for b in batches])
    return out, time.perf_counter() - start


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(torch.as_tensor(a).double(), torch.as_tensor(b).double())
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}


def export_info(report: fxpress.export.OnnxExport) -> dict[str, Any]:
    return {
        "onnx_bytes": report.path.stat().st_size,
        "opset": report.opset,
        "forms": report.forms,
        "no_onnx_form": sorted({f"{n.op}: {n.form}" for n in report.substituted}),
        "chosen_scales": len(report.chosen_scales),
        "export_s": round(report.export_s, 1),
    }


def run_minilm(threads: int, out_dir: Path, limit: int | None = None) -> dict[str, Any]:
    """MiniLM int8 -> ONNX; ORT and OpenVINO vs fxpress's eager int8 graph on the held-out sentences."""
    from fxpress.models.minilm import sentence_encoder, tokenize
    from fxpress.models.sentences import sentences

    encoder = sentence_encoder()
    calib, held_out = sentences("calib"), sentences("eval")[:limit]
    batches = [tokenize(calib[i : i + 8], 128) for i in range(0, len(calib), 8)]
    dynamic = ({0: torch.export.Dim("batch")}, {0: torch.export.Dim("batch")})
    graph = fxpress.capture(encoder, batches[0], dynamic_shapes=dynamic)
    observe = Observe(per_channel=True, weight_reduce_range=True, dynamic=(FFN_OUT,))
    int8 = fxpress.optimize(graph, [observe, Calibrate(data=batches), FoldQDQ()])
    report = fxpress.to_onnx(int8, out_dir / "minilm_int8.onnx")
    ids, mask = tokenize(held_out, 128)
    data = [(ids[i : i + 16].numpy(), mask[i : i + 16].numpy()) for i in range(0, len(held_out), 16)]
    with torch.no_grad():
        fp32, _ = timed(lambda i, m: encoder(torch.from_numpy(i), torch.from_numpy(m)), data)
        eager, eager_s = timed(lambda i, m: int8(torch.from_numpy(i), torch.from_numpy(m)), data)
    session = ort_session(report.path, threads)
    ort_out, ort_s = timed(lambda i, m: session.run(None, {"input_ids": i, "attention_mask": m})[0], data)
    result: dict[str, Any] = {
        "sentences": len(held_out),
        "seq_len": 128,
        "export": export_info(report),
        "eager_int8_vs_fp32": cosines(eager, fp32),
        "ort_vs_eager_int8": cosines(ort_out, eager),
        "ort_vs_fp32": cosines(ort_out, fp32),
        "seconds": {"fxpress_eager_int8": round(eager_s, 1), "ort": round(ort_s, 1)},
    }
    compiled = openvino_model(report.path, threads)
    result["openvino_ran"] = compiled is not None
    if compiled is not None:
        ov_out, ov_s = timed(lambda i, m: compiled([i, m])[compiled.outputs[0]], data)
        result["openvino_vs_eager_int8"] = cosines(ov_out, eager)
        result["openvino_vs_fp32"] = cosines(ov_out, fp32)
        result["seconds"]["openvino"] = round(ov_s, 1)
    return result


def run_mnist(threads: int, out_dir: Path, limit: int | None = None) -> dict[str, Any]:
    """The MNIST CNN int8 -> ONNX; ORT and OpenVINO predictions vs the eager int8 graph's on the test set."""
    from fxpress.data.mnist import mnist
    from fxpress.models.mnist_cnn import mnist_cnn, preprocess

    images, labels = mnist("test")
    images, labels = images[:limit], labels[:limit]
    train_images, _ = mnist("train")
    model = mnist_cnn()
    calib = [(preprocess(train_images[i : i + 64]),) for i in range(0, 512, 64)]
    graph = fxpress.capture(model, calib[0], dynamic_shapes=({0: torch.export.Dim("batch")},))
    observe = Observe(per_channel=True, weight_reduce_range=True)
    int8 = fxpress.optimize(graph, [FoldBatchNorm(), observe, Calibrate(data=calib), FoldQDQ()])
    report = fxpress.to_onnx(int8, out_dir / "mnist_int8.onnx")
    x = preprocess(images)
    data = [(x[i : i + 250].numpy(),) for i in range(0, len(x), 250)]
    with torch.no_grad():
        fp32, _ = timed(lambda b: model(torch.from_numpy(b)), data)
        eager, eager_s = timed(lambda b: int8(torch.from_numpy(b)), data)
    session = ort_session(report.path, threads)
    name = session.get_inputs()[0].name
    ort_out, ort_s = timed(lambda b: session.run(None, {name: b})[0], data)
    truth = np.asarray(labels)

    def agreement(out: np.ndarray) -> dict[str, float]:
        pred = out.argmax(1)
        same = float((pred == eager.argmax(1)).mean() * 100)
        return {"same_as_eager_int8_pct": round(same, 2), "accuracy_pct": round(float((pred == truth).mean() * 100), 2)}

    result: dict[str, Any] = {
        "test_images": len(truth),
        "export": export_info(report),
        "fp32_accuracy_pct": round(float((fp32.argmax(1) == truth).mean() * 100), 2),
        "eager_int8_accuracy_pct": round(float((eager.argmax(1) == truth).mean() * 100), 2),
        "ort": agreement(ort_out),
        "seconds": {"fxpress_eager_int8": round(eager_s, 1), "ort": round(ort_s, 1)},
    }
    compiled = openvino_model(report.path, threads)
    result["openvino_ran"] = compiled is not None
    if compiled is not None:
        ov_out, ov_s = timed(lambda b: compiled([b])[compiled.outputs[0]], data)
        result["openvino"] = agreement(ov_out)
        result["seconds"]["openvino"] = round(ov_s, 1)
    return result


def rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(check, value, note) lines of the summary table."""
    m, c = result["minilm"], result["mnist"]
    ort_m, ort_c = m["ort_vs_eager_int8"], c["ort"]
    ov_m = m.get("openvino_vs_eager_int8", {}).get("mean", float("nan"))
    ov_c = c.get("openvino", {}).get("same_as_eager_int8_pct", float("nan"))
    accuracy = f"{c['fp32_accuracy_pct']:.2f} / {c['eager_int8_accuracy_pct']:.2f} / {ort_c['accuracy_pct']:.2f} %"
    return [
        ("MiniLM: ORT vs fxpress eager int8, mean cosine", f"{ort_m['mean']:.4f}", "acceptance >= 0.999"),
        ("MiniLM: ORT vs fxpress eager int8, min cosine", f"{ort_m['min']:.4f}", f"{m['sentences']} sentences"),
        (
            "MiniLM: ORT vs fp32, mean cosine",
            f"{m['ort_vs_fp32']['mean']:.4f}",
            f"eager int8 vs fp32: {m['eager_int8_vs_fp32']['mean']:.4f}",
        ),
        ("MiniLM: OpenVINO ran", "yes" if m["openvino_ran"] else "no", f"vs eager int8: mean cosine {ov_m:.4f}"),
        (
            "MNIST: ORT predicts what eager int8 predicts",
            f"{ort_c['same_as_eager_int8_pct']:.2f} %",
            "acceptance >= 99.9 %",
        ),
        ("MNIST: accuracy fp32 / eager int8 / ORT", accuracy, f"{c['test_images']} test images"),
        ("MNIST: OpenVINO ran", "yes" if c["openvino_ran"] else "no", f"predicts what eager int8 does: {ov_c:.2f} %"),
    ]


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"fxpress int8 graphs exported to ONNX (QDQ) and run by ONNX Runtime {result['versions']['onnxruntime']} "
        f"and OpenVINO {result['versions'].get('openvino', '-')}; {result['cpu']}, {result['threads']} thread(s).",
        "",
        "| check | value | note |",
        "|---|---:|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows(result)),
        "",
    ]
    for name in ("minilm", "mnist"):
        e = result[name]["export"]
        lines.append(
            f"- {name}: {e['onnx_bytes'] / 1e6:.1f} MB, opset {e['opset']}, {e['forms']}; no ONNX form: "
            f"{e['no_onnx_form'] or 'none'}; int8 scales chosen (not in the graph): {e['chosen_scales']}; "
            f"seconds {result[name]['seconds']}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch, ONNX Runtime and OpenVINO threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "export_onnx", help="<out>.json and <out>.md")
    parser.add_argument("--keep", type=Path, default=None, help="keep the .onnx files in this directory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import openvino

        versions["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        result = {
            "cpu": host_cpu_model(),
            "threads": args.threads,
            "versions": versions,
            "minilm": run_minilm(args.threads, out_dir),
            "mnist": run_mnist(args.threads, out_dir),
        }
    width = max(len(r[0]) for r in rows(result))
    for name, value, note in rows(result):
        print(f"{name:<{width}}  {value:>24}  {note}")
    print(f"({result['cpu']}, {args.threads} thread(s))")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
