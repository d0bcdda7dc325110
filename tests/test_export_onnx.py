"""ONNX export (`fxpress.to_onnx`): float, pruned, sparsified and int8 graphs, run by ONNX Runtime and OpenVINO.

The oracle is fxpress's own eager graph on real inputs: float graphs within
1e-4; int8 graphs (QDQ) within one output quantization step per element with
the same predictions, since ONNX Runtime's fused int8 kernels requantize with
a float32 multiplier rounding half to even where fxpress uses a Q31
multiplier rounding half up (an int8 value may land one step apart). The
file itself is checked: int8 weights as int8 initializers dequantized per
output channel on axis 0 with one scale per channel, the calibrated
activation scales and zero points (uint8: + 128), dynamic batch.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import ExportError
from fxpress.ir.annotations import get
from fxpress.passes import AnnotateSparsity, Calibrate, FakeQuantize, FoldQDQ, Observe, Sparsify
from fxpress.passes.prune import PruneChannels

BATCH = {0: torch.export.Dim("batch")}


class TinyCNN(nn.Module):
    """conv -> relu -> max-pool -> strided conv -> relu -> flatten -> linear -> linear (int8 between the linears)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2)
        self.fc1 = nn.Linear(16 * 3 * 3, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.relu(self.c2(x)).flatten(1)
        return self.fc2(self.fc1(x))


class TinyAttention(nn.Module):
    """One attention head: Q, K, V feed only the int8 matmuls, so their scales are not in the folded graph."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(self.q(x), self.k(x).transpose(-1, -2)) / 4.0
        return self.out(torch.matmul(torch.softmax(scores, -1), self.v(x)))


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 6, 16, generator=torch.Generator().manual_seed(seed))


def _int8(model: nn.Module, data: list[torch.Tensor], **observe: object) -> fxpress.Graph:
    graph = fxpress.capture(model, data[0], dynamic_shapes=(BATCH,))
    return fxpress.optimize(
        graph, [Observe(per_channel=True, **observe), Calibrate(data=[(x,) for x in data]), FoldQDQ()]
    )


def _ort(path, x: torch.Tensor, *, optimize: bool = True) -> np.ndarray:
    """ONNX Runtime's output; ``optimize=False``: the file's own semantics, Q/DQ computed as written (no int8 fusion)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _output_step(graph: fxpress.Graph) -> float:
    """The calibrated quantization step of the graph's output (its float-out layer keeps its qparams)."""
    out = graph.output_node.args[0]
    node = out[0] if isinstance(out, tuple | list) else out
    return float(get(node, "qparams").scale.max())


@pytest.fixture(scope="module")
def cnn_int8() -> fxpress.Graph:
    torch.manual_seed(0)
    return _int8(TinyCNN().eval(), [_images(8, s) for s in range(4)])


@pytest.fixture(scope="module")
def cnn_onnx(cnn_int8, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "cnn_int8.onnx"
    return path, fxpress.to_onnx(cnn_int8, path)


def test_float_pruned_and_sparse_graphs_match_eager(tmp_path):
    torch.manual_seed(0)
    graph = fxpress.capture(TinyCNN().eval(), _images(4, 0), dynamic_shapes=(BATCH,))
    variants = {
        "float": graph,
        "pruned": fxpress.optimize(graph, [PruneChannels(ratio=0.5)]),
        "sparse": fxpress.optimize(graph, [Sparsify(density=0.25), AnnotateSparsity()]),
    }
    x = _images(5, 9)  # another batch size: the batch stays dynamic
    for name, g in variants.items():
        report = fxpress.to_onnx(g, tmp_path / f"{name}.onnx")
        assert report.nodes == [] and report.substituted == []
        np.testing.assert_allclose(_ort(report.path, x), g(x).numpy(), rtol=0, atol=1e-4, err_msg=name)
    pruned = onnx.load(str(tmp_path / "pruned.onnx"))
    assert [list(i.dims) for i in pruned.graph.initializer if list(i.dims)[:1] == [4]]  # c1 kept 4 of 8 channels


def test_int8_cnn_runs_in_ort_within_one_step(cnn_int8, cnn_onnx):
    path, report = cnn_onnx
    x = _images(64, 7)
    ref, out = cnn_int8(x).numpy(), _ort(path, x)
    assert np.abs(out - ref).max() <= _output_step(cnn_int8)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98
    assert report.forms == {
        "QuantizeLinear": 3,  # the input and the two ReLUs' outputs
        "int8 QDQ, float out": 3,  # conv1 and conv2 (read by a float ReLU), fc2 (the output)
        "int8 QDQ": 1,  # fc1, read by fc2 in int8
    }
    assert report.substituted == [] and report.chosen_scales == [report.nodes[-2].node]  # fc1's int8 output


def test_int8_file_has_per_channel_weights_and_calibrated_activations(cnn_int8, cnn_onnx):
    path, _ = cnn_onnx
    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("weight_i8"):
            axis = next(a.i for a in node.attribute if a.name == "axis")
            weights[node.input[0]] = (inits[node.input[0]], inits[node.input[1]], axis)
    assert sorted(weights) == ["c1_weight_i8", "c2_weight_i8", "fc1_weight_i8", "fc2_weight_i8"]
    for name, (w, scale, axis) in weights.items():
        assert w.dtype == np.int8 and axis == 0 and scale.shape == (w.shape[0],), name
        np.testing.assert_array_equal(w, cnn_int8.param(name).numpy())
    first_q = next(n for n in cnn_int8.nodes("call_function") if n.target == torch.ops.fxpress.quantize.default)
    q_in = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    assert float(inits[q_in.input[1]]) == pytest.approx(first_q.args[1], rel=1e-7)
    assert inits[q_in.input[2]].dtype == np.uint8 and int(inits[q_in.input[2]]) == first_q.args[2] + 128


def test_int8_activations_as_int8(cnn_int8, tmp_path):
    report = fxpress.to_onnx(cnn_int8, tmp_path / "s8.onnx", activations="int8")
    x = _images(16, 3)
    assert np.abs(_ort(report.path, x) - cnn_int8(x).numpy()).max() <= _output_step(cnn_int8)
    model = onnx.load(str(report.path))
    zps = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert zps == [] and report.activations == "int8"


def test_attention_scales_solved_from_the_matmuls(tmp_path):
    torch.manual_seed(0)
    graph = _int8(TinyAttention().eval(), [_tokens(8, s) for s in range(4)])
    ops = {str(n.target) for n in graph.nodes("call_function")}
    assert {"fxpress.quantized_matmul.default", "fxpress.quantized_matmul_float.default"} <= ops
    report = fxpress.to_onnx(graph, tmp_path / "att.onnx")
    assert len(report.chosen_scales) == 2  # Q (K follows from Q·Kᵀ's scale) and V (P·V's output follows)
    x = _tokens(32, 11)
    ref, out = graph(x).numpy(), _ort(report.path, x)
    assert np.abs(out - ref).max() <= _output_step(graph)


def test_dynamic_linear_written_as_its_float_ops(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    data = [torch.randn(8, 16) for _ in range(3)]
    graph = _int8(model, data, dynamic=(r"^2$",))
    report = fxpress.to_onnx(graph, tmp_path / "dyn.onnx")
    assert [(n.op, n.substituted) for n in report.substituted] == [("fxpress.dynamic_quantized_linear", True)]
    assert "no ONNX form" in str(report)
    x = torch.randn(20, 16)
    np.testing.assert_allclose(_ort(report.path, x), graph(x).numpy(), rtol=0, atol=1e-5)


def test_block_sparse_linear_written_dense(tmp_path):
    from fxpress.ir.sparse_ops import dense_weight

    class BlockSparse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.data = nn.Parameter(torch.randn(2, 2, 4, 4), requires_grad=False)  # [nb, L, C, R]
            self.register_buffer("cols", torch.tensor([[0, 2], [1, 1]], dtype=torch.int32))
            self.register_buffer("counts", torch.tensor([2, 1], dtype=torch.int32))
            self.bias = nn.Parameter(torch.randn(8), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.fxpress.block_sparse_linear(x, self.data, self.cols, self.counts, self.bias)

    module = BlockSparse().eval()
    with torch.no_grad():  # the padding block of row 1 must be zero
        module.data[1, 1].zero_()
    graph = fxpress.capture(module, torch.randn(3, 12), dynamic_shapes=(BATCH,))
    report = fxpress.to_onnx(graph, tmp_path / "bsr.onnx")
    assert report.substituted[0].form.startswith("dense float")
    x = torch.randn(5, 12)
    dense = dense_weight(module.data, module.cols, 12)
    np.testing.assert_allclose(_ort(report.path, x), (x @ dense.T + module.bias).numpy(), rtol=0, atol=1e-5)


def test_fake_quantized_graph_as_qdq(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    data = [(torch.randn(8, 16),) for _ in range(3)]
    graph = fxpress.capture(model, data[0], dynamic_shapes=(BATCH,))
    fq = fxpress.optimize(graph, [Observe(per_channel=True), Calibrate(data=data), FakeQuantize()])
    report = fxpress.to_onnx(fq, tmp_path / "fq.onnx")
    assert set(report.forms) == {"QDQ (fake quantization)"}
    x = torch.randn(10, 16)  # as written, the file computes what the fake-quantized graph does
    np.testing.assert_allclose(_ort(report.path, x, optimize=False), fq(x).numpy(), rtol=0, atol=1e-5)


def test_openvino_loads_and_runs_the_int8_file(cnn_int8, cnn_onnx):
    ov = pytest.importorskip("openvino")
    path, _ = cnn_onnx
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1})
    x = _images(32, 5)
    out = compiled([x.numpy()])[compiled.outputs[0]]
    ref = cnn_int8(x).numpy()
    assert out.shape == ref.shape
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_op_without_onnx_form_is_refused_by_name(tmp_path):
    @torch.library.custom_op("fxpress_test::mystery", mutates_args=())
    def mystery(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @mystery.register_fake
    def _(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    class Mystery(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.fxpress_test.mystery(torch.relu(x))

    graph = fxpress.capture(Mystery(), torch.randn(2, 4))
    with pytest.raises(
        ExportError, match=r"mystery.*fxpress_test::mystery.*no ONNX form and no float equivalent"
    ) as err:
        fxpress.to_onnx(graph, tmp_path / "m.onnx")
    assert err.value.node == "mystery" and not (tmp_path / "m.onnx").exists()
    with pytest.raises(ExportError, match="activations must be one of"):
        fxpress.to_onnx(graph, tmp_path / "m.onnx", activations="fp16")


def test_cli_export_onnx_prints_the_report(tmp_path, capsys):
    from fxpress.cli import main

    model = tmp_path / "model.py"
    model.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()\n"
        "def batches():\n"
        "    return [(torch.randn(4, 6, generator=torch.Generator().manual_seed(i)),) for i in range(3)]\n"
    )
    out = tmp_path / "m.onnx"
    argv = ["export", f"{model}:build", "--input-shape", "4,6", "--passes", "observe,calibrate,fold-qdq"]
    assert main([*argv, "--calibration", f"{model}:batches", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "int8 QDQ" in text
    assert main(["export", f"{model}:build", "--input-shape", "4,6", "-o", str(tmp_path / "m.bin")]) == 2
    assert "give --format onnx or pt2" in capsys.readouterr().err
