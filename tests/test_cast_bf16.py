"""cast-bf16 and its kernels: the reference op, the pass (golden IR, numerics, leave-alone, bad input),
bf16 rounding in TE against torch bit for bit, the AMX-BF16 GEMM (assembly anywhere, results on an
AMX host), compiled models against eager, the artifact's weight bytes, quant-report's bf16 columns
and the ONNX form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from conftest import runnable_preset
from torch import nn
from tvm import te

import fxpress
from fxpress.backends.tvm.isa.x86_amx.bench import amx_host_target
from fxpress.backends.tvm.isa.x86_amx.gemm import GemmShape, amx_gemm
from fxpress.backends.tvm.isa.x86_amx.layout import pack_weight, packed_shape
from fxpress.backends.tvm.te_bf16 import te_bf16_bits, te_bf16_round
from fxpress.ir.ops import bf16_round
from fxpress.passes import CastBf16
from fxpress.runtime import amx
from fxpress.runtime.cpu import host_cpu_flags

AMX_BF16 = ("amx_bf16", "amx_tile")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.float().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


@pytest.fixture
def amx_bf16_host() -> None:
    missing = [f for f in AMX_BF16 if f not in host_cpu_flags()]
    if missing:
        pytest.skip(f"the host CPU lacks {', '.join(missing)} (/proc/cpuinfo): AMX-BF16 code cannot run here")
    amx.request_amx_permission()


# -- the reference op -------------------------------------------------------------------------------


def test_reference_rounds_both_operands_and_sums_in_float32() -> None:
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(3, 5, 40, generator=g), torch.randn(24, 40, generator=g), torch.randn(24, generator=g)
    y = torch.ops.fxpress.bf16_linear(x, w, b)
    exact = bf16_round(x).double() @ bf16_round(w).double().T + b.double()
    torch.testing.assert_close(y.double(), exact, rtol=1e-6, atol=1e-5)
    assert not torch.allclose(y, nn.functional.linear(x, w, b), rtol=1e-4, atol=1e-4)  # it does round
    assert torch.ops.fxpress.bf16_linear(x, w, None).shape == (3, 5, 24)


def test_reference_gradient_is_straight_through() -> None:
    x = torch.randn(4, 8, requires_grad=True)
    w, b = torch.randn(6, 8, requires_grad=True), torch.randn(6, requires_grad=True)
    torch.ops.fxpress.bf16_linear(x, w, b).pow(2).sum().backward()
    y = nn.functional.linear(bf16_round(x.detach()), bf16_round(w.detach()), b.detach())
    torch.testing.assert_close(x.grad, (2 * y) @ bf16_round(w.detach()))
    torch.testing.assert_close(w.grad, (2 * y).T @ bf16_round(x.detach()))
    torch.testing.assert_close(b.grad, (2 * y).sum(0))


# -- the pass ---------------------------------------------------------------------------------------


def test_golden_ir_and_numerics() -> None:
    model, x = _mlp(), torch.randn(4, 64)
    graph = fxpress.capture(model, (x,))
    out = fxpress.optimize(graph, "cast-bf16{layers=[^2$]}")
    text = str(out)
    assert "%2 = fxpress.bf16_linear(%1, %2.weight, %2.bias) : f32[4,32]" in text
    assert "%0 = aten.linear(%input_1, %0.weight, %0.bias)" in text
    assert out.trace[-1].stats == {"cast": 1} and "bf16-cast" in out.properties
    assert "bf16_linear" not in str(graph)  # the input graph is untouched
    h = model[1](model[0](x))
    torch.testing.assert_close(out(x), torch.ops.fxpress.bf16_linear(h, model[2].weight, model[2].bias))
    assert torch.equal(out.param("2.weight"), graph.param("2.weight"))  # the op rounds; the weight stays


def test_int8_layers_stay_int8_and_the_skipped_ones_go_bf16() -> None:
    """After fold-qdq, cast-bf16 takes what quantization left in float; before it, annotated layers stay."""
    model, x = _mlp(), torch.randn(8, 64)
    data = [(torch.randn(8, 64),) for _ in range(2)]
    graph = fxpress.capture(model, (x,))
    int8 = [
        fxpress.passes.Observe(per_channel=True, skip=("^2$",)),
        fxpress.passes.Calibrate(data=data),
        fxpress.passes.FoldQDQ(),
    ]
    out = fxpress.optimize(graph, [*int8, CastBf16()])
    targets = [str(n.target) for n in out.nodes("call_function")]
    assert "fxpress.bf16_linear.default" in targets and "aten.linear.default" not in targets
    assert any("quantized_linear" in t for t in targets)
    observed = fxpress.optimize(graph, int8[:2])
    between = fxpress.optimize(observed, [CastBf16()])
    assert between.trace[-1].stats == {"cast": 1, "left_quantized": 1}


def _cnn() -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=4),
        nn.Conv2d(64, 48, 1, bias=False),
    ).eval()


def test_convs_golden_ir_and_numerics() -> None:
    model, x = _cnn(), torch.randn(2, 3, 16, 16)
    out = fxpress.optimize(fxpress.capture(model, (x,)), "cast-bf16")
    text = str(out)
    assert "%2 = fxpress.bf16_conv2d(%1, %2.weight, %2.bias, [2, 2], [1, 1], [1, 1], 1) : f32[2,64,8,8]" in text
    assert "%4 = fxpress.bf16_conv2d(%3, %4.weight, %4.bias, [1, 1], [1, 1], [1, 1], 4)" in text
    assert "%5 = fxpress.bf16_conv2d(%4, %5.weight, none, [1, 1], [0, 0], [1, 1], 1)" in text
    last = fxpress.optimize(fxpress.capture(model, (x,)), "cast-bf16{layers=[^5$]}")
    want = nn.functional.conv2d(bf16_round(model[:5](x)), bf16_round(model[5].weight))
    torch.testing.assert_close(last(x), want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(last(x), model(x), rtol=1e-4, atol=1e-4)


def test_conv_reference_gradient_is_straight_through() -> None:
    x, w = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    torch.ops.fxpress.bf16_conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1).pow(2).sum().backward()
    leaves = [bf16_round(x.detach()).requires_grad_(), bf16_round(w.detach()).requires_grad_()]
    bias = b.detach().requires_grad_()
    nn.functional.conv2d(*leaves, bias, 1, 1).pow(2).sum().backward()
    for got, want in ((x.grad, leaves[0].grad), (w.grad, leaves[1].grad), (b.grad, bias.grad)):
        torch.testing.assert_close(got, want)


def test_leaves_alone_graphs_without_float_linears_or_convs() -> None:
    pool = nn.Sequential(nn.MaxPool2d(2), nn.ReLU()).eval()
    graph = fxpress.capture(pool, (torch.randn(1, 3, 8, 8),))
    out = fxpress.optimize(graph, "cast-bf16")
    assert out.trace[-1].modified is False and str(out) == str(graph)


def test_bad_input() -> None:
    graph = fxpress.capture(_mlp(), (torch.randn(2, 64),))
    with pytest.raises(ValueError, match=r"cast-bf16: bad regex '\('"):
        CastBf16(layers=("(",))
    with pytest.raises(Exception, match=r"layers pattern 'decoder' matches no float linear or conv; they are: 0, 2"):
        fxpress.optimize(graph, "cast-bf16{layers=[decoder]}")


# -- bf16 rounding in TE ----------------------------------------------------------------------------

EDGES = [0.0, -0.0, 1.0, 1.00390625, 1.0078125, 1.01171875, -1.01171875, 3.0e38, 1e-40, -1e-40, 65504.0]


@pytest.mark.tvm
def test_te_rounding_matches_torch_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(2)
    values = torch.cat([torch.tensor(EDGES), torch.randn(501, generator=g) * 10.0 ** torch.randint(-6, 6, (501,))])
    values = torch.cat([values, torch.tensor([float("inf"), float("-inf"), float("nan")])])
    n = values.numel()
    x = te.placeholder((1, n), "float32", name="x")
    bits, rounded = te_bf16_bits(x, n + 3), te_bf16_round(x)
    mod = tvm.IRModule(
        {
            "bits": te.create_prim_func([x, bits]).with_attr("global_symbol", "bits"),
            "rounded": te.create_prim_func([x, rounded]).with_attr("global_symbol", "rounded"),
        }
    )
    lib = tvm.compile(mod, target="llvm")
    xin = tvm.runtime.tensor(values.numpy()[None])
    out_bits, out_round = (
        tvm.runtime.tensor(np.zeros((1, n + 3), np.uint16)),
        tvm.runtime.tensor(np.zeros((1, n), np.float32)),
    )
    lib["bits"](xin, out_bits)
    lib["rounded"](xin, out_round)
    want = _bits(values)
    got = out_bits.numpy()[0]
    finite = ~torch.isnan(values).numpy()
    np.testing.assert_array_equal(got[:n][finite], want[finite])
    assert np.isnan((got[:n][~finite].astype(np.uint32) << 16).view(np.float32)).all()
    assert (got[n:] == 0).all()  # K padding
    np.testing.assert_array_equal(out_round.numpy()[0][finite], bf16_round(values).numpy()[finite])


# -- the AMX-BF16 GEMM ------------------------------------------------------------------------------


def test_bf16_gemm_shape_and_packing() -> None:
    assert GemmShape(1, 16, 384, bf16=True).k_step == 64  # 32 bf16 values per tile row
    assert GemmShape(1, 16, 54, bf16=True).k_step == 36
    assert packed_shape(40, 12, 2) == (2, 6, 32, 2)
    w = np.arange(40 * 12, dtype=np.uint16).reshape(40, 12)
    wp = pack_weight(w)
    assert wp.shape == (2, 6, 32, 2) and wp[1, 2, 3, 1] == w[35, 5] and wp[1, 0, 9, 0] == 0
    with pytest.raises(ValueError, match="multiple of 2"):
        GemmShape(1, 16, 27, bf16=True)
    assert "bf16bf16" in str(amx_gemm(33, 47, 128, bf16=True).attrs["global_symbol"])


@pytest.mark.tvm
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_gemm_asm_has_tdpbf16ps(threads: int) -> None:
    """A build for a Sapphire Rapids CPU, from any x86 host, emits the bf16 tile dot product."""
    func = amx_gemm(33, 47, 128, threads=threads, bf16=True)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": threads})
    lib = tvm.compile(tvm.IRModule({str(func.attrs["global_symbol"]): func}), target=target)
    asm = lib.mod.inspect_source("asm")
    for insn in ("ldtilecfg", "tileloadd", "tilestored", "tilerelease", "tdpbf16ps"):
        assert insn in asm, insn


@pytest.mark.tvm
@pytest.mark.usefixtures("amx_bf16_host")
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_gemm_matches_exact_products(threads: int) -> None:
    shapes = [(128, 384, 1536), (33, 47, 68), (17, 16, 2), (100, 64, 108)]
    funcs = [amx_gemm(m, n, k, threads=threads, bf16=True) for m, n, k in shapes]
    lib = tvm.compile(tvm.IRModule({str(f.attrs["global_symbol"]): f for f in funcs}), target=amx_host_target(threads))
    g = torch.Generator().manual_seed(3)
    for (m, n, k), func in zip(shapes, funcs, strict=True):
        a, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        c = tvm.runtime.tensor(np.full((m, n), -7.0, np.float32))
        lib[str(func.attrs["global_symbol"])](
            tvm.runtime.tensor(_bits(a)), tvm.runtime.tensor(pack_weight(_bits(w))), c
        )
        exact = (bf16_round(a).double() @ bf16_round(w).double().T).numpy()
        np.testing.assert_allclose(c.numpy(), exact, rtol=0, atol=2e-6 * np.sqrt(k) * np.abs(exact).max())


# -- compiled models --------------------------------------------------------------------------------


@pytest.mark.tvm
@pytest.mark.parametrize("target", ["x86", "x86-avx512"])
def test_compiled_matches_eager(target: str) -> None:
    """Every linear in bf16 (the AMX tiles where the host has them, else a float32 GEMM over rounded values)."""
    if target != "x86":
        runnable_preset(target)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(384, 256), nn.ReLU(), nn.Linear(256, 384)).eval()
    x = torch.randn(2, 64, 384)
    graph = fxpress.optimize(fxpress.capture(model, (x,)), "cast-bf16{layers=[^0$]}")
    compiled = fxpress.compile(graph, target=target, num_threads=1, tuning=False)
    got = np.asarray(compiled(x.numpy()))
    want = graph(x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.tvm
@pytest.mark.parametrize("target", ["x86", "x86-avx512"])
def test_compiled_convs_match_eager(target: str) -> None:
    """Regular, strided, grouped and 1x1 convs: AMX im2col tiles for groups=1 with 16+ channels, else float32."""
    if target != "x86":
        runnable_preset(target)
    model, x = _cnn(), torch.randn(2, 3, 16, 16)
    graph = fxpress.optimize(fxpress.capture(model, (x,)), "cast-bf16")
    compiled = fxpress.compile(graph, target=target, num_threads=1, tuning=False)
    want = graph(x).detach().numpy()
    np.testing.assert_allclose(np.asarray(compiled(x.numpy())), want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.tvm
def test_amx_lowering_takes_the_tiles_for_big_layers_only() -> None:
    """Cross-built for x86-amx: the tile GEMM for the 32-channel conv, the 1x1 conv and the big linear; the
    RGB stem, the grouped conv and the tiny linear keep the float32 kernels."""
    from fxpress.backends.tvm.compile import import_graph
    from fxpress.backends.tvm.targets import resolve_target

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cnn, self.fc, self.tiny = _cnn(), nn.Linear(48 * 64, 256), nn.Linear(256, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.tiny(self.fc(self.cnn(x).flatten(1)))

    graph = fxpress.optimize(fxpress.capture(Net().eval(), (torch.randn(2, 3, 16, 16),)), "cast-bf16")
    mod, _, _ = import_graph(graph, resolve_target("x86-amx", num_threads=1, cross=True))
    gemms = sorted(str(gv.name_hint) for gv in mod.functions if str(gv.name_hint).startswith("amx_gemm_bf16"))
    assert len(gemms) == 3, gemms  # conv 32->64 (M 128, K 288), 1x1 64->48 (K 64), fc (M 2, K 3072)
    assert sum("im2col" in str(gv.name_hint) for gv in mod.functions) == 2


@pytest.mark.tvm
@pytest.mark.usefixtures("amx_bf16_host")
def test_amx_artifact_stores_bf16_weights(tmp_path) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(256, 512)).eval()
    x = torch.randn(64, 256)
    graph = fxpress.capture(model, (x,))
    dense = fxpress.compile(graph, target="x86", num_threads=1, tuning=False)
    half = fxpress.compile(fxpress.optimize(graph, "cast-bf16"), target="x86", num_threads=1, tuning=False)
    dense.save(str(tmp_path / "f32"))
    half.save(str(tmp_path / "bf16"))
    f32_bytes = (tmp_path / "f32" / "weights.safetensors").stat().st_size
    bf16_bytes = (tmp_path / "bf16" / "weights.safetensors").stat().st_size
    assert bf16_bytes < 0.55 * f32_bytes, (bf16_bytes, f32_bytes)
    loaded = fxpress.load(tmp_path / "bf16")
    want = torch.ops.fxpress.bf16_linear(x, model[0].weight, model[0].bias).detach().numpy()
    np.testing.assert_allclose(np.asarray(loaded(x.numpy())), want, rtol=0, atol=1e-5 * np.abs(want).max())


# -- reports and export -----------------------------------------------------------------------------


def test_quant_report_bf16_columns() -> None:
    from fxpress.reports.quant_report import quant_report

    model = _mlp()
    data = [(torch.randn(8, 64),) for _ in range(2)]
    report = quant_report(model, data, bf16=True)
    for row in report.rows:
        assert row.bf16_sqnr_db is not None and row.bf16_model_cosine is not None
        assert row.bf16_sqnr_db > row.sqnr_db + 6  # bf16 keeps 8 bits of mantissa: far closer than int8 here
        assert 0.9999 < row.bf16_model_cosine <= 1.0
    assert "bf16 SQNR" in report.text() and report.to_json()["bf16"] is True
    plain = quant_report(model, data)
    assert plain.rows[0].bf16_sqnr_db is None and "bf16 SQNR" not in plain.text()


def test_onnx_export_rounds_like_the_op(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from fxpress.export import to_onnx

    model, x = _mlp(), torch.randn(4, 64)
    graph = fxpress.optimize(fxpress.capture(model, (x,)), "cast-bf16")
    to_onnx(graph, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, graph(x).detach().numpy(), rtol=1e-6, atol=1e-6)
