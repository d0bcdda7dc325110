"""The VNNI int8 kernels (isa/x86_vnni): vpdpbusd micro-kernels, 16-lane GEMM and conv, bit-exact vs torch.

Assembly checks build for a named CPU (cross builds: they run on any x86
host); numeric runs need AVX512-VNNI on this host and skip, naming the flag,
where it lacks it. No timing assertions.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
import tvm
from tvm import te
from tvm.s_tir import TensorIntrin

import fxpress
from fxpress.backends.tvm.isa.x86_vnni import intrin
from fxpress.backends.tvm.isa.x86_vnni.bench import (
    assembly,
    build_gemm,
    compile_te,
    group_activations,
    host_target,
    microbench,
    pack_gemm_weights,
    unique_name,
)
from fxpress.backends.tvm.isa.x86_vnni.int8 import VnniISA
from fxpress.backends.tvm.isa.x86_vnni.kernels import (
    AVX_VNNI_KERNELS,
    VNNI_KERNELS,
    CPUInt8Conv2dVNNI,
    CPUInt8GemmVNNI,
)
from fxpress.backends.tvm.kernels.int8_avx2 import CPUInt8MatmulAVX2, u8s8_safe
from fxpress.backends.tvm.targets import TargetSpec, resolve_target
from fxpress.backends.tvm.te_conv import te_conv_shift_u8, te_quantized_conv2d_pmadd
from fxpress.backends.tvm.te_gemm import (
    te_pack_activation,
    te_panel_acc,
    te_quantized_linear_pmadd,
    te_quantized_matmul_pmadd,
    te_shift_u8,
    te_widen_rows,
)
from fxpress.ir import ops
from fxpress.runtime.cpu import host_cpu_flags

pytestmark = pytest.mark.tvm

CASCADELAKE = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 1})
ALDERLAKE = tvm.target.Target({"kind": "llvm", "mcpu": "alderlake", "num-cores": 1})


def _needs(flag: str) -> None:
    if flag not in host_cpu_flags():
        pytest.skip(f"the host CPU lacks {flag}")


@pytest.fixture
def vnni_host() -> tvm.target.Target:
    _needs("avx512_vnni")
    return host_target(1)


def _tensor(x: torch.Tensor | np.ndarray) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else x), tvm.cpu())


def _run(module: tvm.runtime.Module, name: str, *args: torch.Tensor, out: tuple[tuple[int, ...], str]) -> np.ndarray:
    result = tvm.runtime.tensor(np.zeros(out[0], dtype=out[1]), tvm.cpu())
    module[name](*(_tensor(a) for a in args), result)
    return result.numpy()


def _unscheduled(tensors: list[te.Tensor], *args: torch.Tensor) -> np.ndarray:
    """A TE prologue (te_shift_u8, te_conv_shift_u8, ...) run as TVM's plain loops: its output."""
    name = unique_name("fx_test_prologue")
    func = te.create_prim_func(tensors).with_attr("global_symbol", name)
    module = tvm.compile(tvm.IRModule({name: func}), target="llvm").mod
    out = tensors[-1]
    return _run(module, name, *args, out=(tuple(int(d) for d in out.shape), str(out.dtype)))


def _full_range(*shape: int, seed: int) -> torch.Tensor:
    """int8 weights over all of [-128, 127], with the extremes planted (vpmaddubsw would saturate on them)."""
    w = torch.randint(-128, 128, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    w.view(-1)[:4] = torch.tensor([-128, -128, 127, 127])
    return w.to(torch.int8)


# ---------------------------------------------------------------- intrinsics and assembly (any x86 host)


@pytest.mark.parametrize(
    ("name", "lanes", "group", "dtypes"),
    [
        (intrin.VPDPBUSD_16, 16, 4, ("uint8", "int8")),
        (intrin.VPDPBUSD_8, 8, 4, ("uint8", "int8")),
        (intrin.VPDPWSSD_16, 16, 2, ("int16", "int16")),
        (intrin.VPDPWSSD_8, 8, 2, ("int16", "int16")),
    ],
)
def test_intrinsics_are_registered_by_lane_width(name: str, lanes: int, group: int, dtypes: tuple[str, str]) -> None:
    desc = TensorIntrin.get(name).desc
    a, b, c = desc.params  # buffer parameters
    assert [int(d) for d in a.shape] == [group] and str(a.dtype) == dtypes[0]
    assert [int(d) for d in b.shape] == [lanes, group] and str(b.dtype) == dtypes[1]
    assert [int(d) for d in c.shape] == [lanes] and str(c.dtype) == "int32"
    assert VNNI_KERNELS.intrinsics[(*dtypes, lanes)] == name


def test_cascadelake_build_has_zmm_vpdpbusd() -> None:
    module, _ = build_gemm(48, 100, 96, lanes=16, target=CASCADELAKE)
    lines = [ln for ln in assembly(module).splitlines() if "vpdpbusd" in ln]
    assert lines and all("%zmm" in ln for ln in lines), lines[:4]
    assert "vpmaddubsw" not in assembly(module)


def test_8_lanes_take_ymm_vpdpbusd_not_pmaddubsw() -> None:
    """The VNNI table's 8-lane u8s8 micro-kernel is one vpdpbusd (ymm), not vpmaddubsw + vpmaddwd."""
    module, _ = build_gemm(24, 64, 40, lanes=8, target=CASCADELAKE)
    asm = assembly(module)
    lines = [ln for ln in asm.splitlines() if "vpdpbusd" in ln]
    assert lines and all("%ymm" in ln for ln in lines), lines[:4]
    assert "vpmaddubsw" not in asm


def test_avx_vnni_build_is_vex_encoded() -> None:
    """Without AVX-512 (alderlake) the same intrinsic is AVX-VNNI's VEX form."""
    module, _ = build_gemm(24, 64, 40, lanes=8, target=ALDERLAKE, micro_kernels=AVX_VNNI_KERNELS)
    asm = assembly(module)
    assert "{vex}\tvpdpbusd" in asm and "%zmm" not in asm


def test_rules_pick_micro_kernels_by_table_and_lanes() -> None:
    """The AVX2 rule leaves 16-lane blocks alone; the VNNI rule takes them; AVX2 8-lane scheduling is unchanged."""
    a = te.placeholder((32, 16, 4), "uint8", name="A")
    b16 = te.placeholder((4, 16, 16, 4), "int8", name="B")
    b8 = te.placeholder((8, 16, 8, 4), "int8", name="B")
    func16 = te.create_prim_func([a, b16, te_panel_acc(a, b16)])
    func8 = te.create_prim_func([a, b8, te_panel_acc(a, b8)])
    with CASCADELAKE:
        assert CPUInt8MatmulAVX2().apply(func16, CASCADELAKE, False) is None
        assert CPUInt8GemmVNNI().apply(func16, CASCADELAKE, False) is not None
        assert "pmadd.ub.sw" in CPUInt8MatmulAVX2().apply(func8, CASCADELAKE, False).mod.script()
        assert "vpdpbusd.256" in CPUInt8GemmVNNI().apply(func8, CASCADELAKE, False).mod.script()
    haswell = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    with haswell:
        assert CPUInt8GemmVNNI().apply(func8, haswell, False) is None  # no VNNI on the target: no VNNI rule


# ---------------------------------------------------------------- numeric runs (AVX512-VNNI hosts)


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(128, 384, 1536), (7, 383, 100), (12, 6, 24), (333, 1000, 10), (40, 1536, 384), (2, 64, 16), (64, 5, 17)],
)
def test_gemm_16_lanes_bit_exact(vnni_host: tvm.target.Target, m: int, k: int, n: int) -> None:
    """Full-range u8 x s8 (K not a multiple of 4, N not of 16: zero padding) against torch's integer matmul."""
    a = torch.randint(0, 256, (m, k), generator=torch.Generator().manual_seed(m + k), dtype=torch.int32)
    w = _full_range(n, k, seed=n)
    module, name = build_gemm(m, k, n, lanes=16, target=vnni_host)
    got = _run(module, name, group_activations(a.to(torch.uint8)), pack_gemm_weights(w, 16), out=((m, n), "int32"))
    np.testing.assert_array_equal(got, (a @ w.to(torch.int32).t()).numpy())


@pytest.mark.parametrize(("m", "k", "n"), [(24, 64, 40), (7, 383, 100), (128, 384, 1536)])
def test_gemm_8_lanes_vnni_bit_exact(vnni_host: tvm.target.Target, m: int, k: int, n: int) -> None:
    a = torch.randint(0, 256, (m, k), generator=torch.Generator().manual_seed(k), dtype=torch.int32)
    w = _full_range(n, k, seed=m)
    module, name = build_gemm(m, k, n, lanes=8, target=vnni_host)
    got = _run(module, name, group_activations(a.to(torch.uint8)), pack_gemm_weights(w, 8), out=((m, n), "int32"))
    np.testing.assert_array_equal(got, (a @ w.to(torch.int32).t()).numpy())


def test_avx_vnni_gemm_bit_exact() -> None:
    _needs("avx_vnni")
    m, k, n = 36, 130, 72
    a = torch.randint(0, 256, (m, k), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    w = _full_range(n, k, seed=2)
    module, name = build_gemm(m, k, n, lanes=8, target=ALDERLAKE, micro_kernels=AVX_VNNI_KERNELS)
    got = _run(module, name, group_activations(a.to(torch.uint8)), pack_gemm_weights(w, 8), out=((m, n), "int32"))
    np.testing.assert_array_equal(got, (a @ w.to(torch.int32).t()).numpy())


def _u8s8_bias(w: torch.Tensor, bias: torch.Tensor, x_zp: int) -> torch.Tensor:
    """``bias - (128 + x_zp) * colsum(w)`` in int64: what the converter folds in for the ``x + 128`` shift."""
    return bias.to(torch.int64) - (128 + x_zp) * w.to(torch.int64).flatten(1).sum(1)


def _panels(v: torch.Tensor, lanes: int) -> torch.Tensor:
    """A per-channel int32 vector as ``[N/L, L]``, zero-padded (a narrow kernel's bias)."""
    return torch.nn.functional.pad(v.to(torch.int32), (0, -v.shape[0] % lanes)).reshape(-1, lanes)


@pytest.mark.parametrize(("m", "k", "n", "narrow"), [(128, 384, 1536, True), (7, 383, 100, False), (30, 70, 33, True)])
def test_quantized_linear_16_lanes_matches_the_reference(
    vnni_host: tvm.target.Target, m: int, k: int, n: int, narrow: bool
) -> None:
    """te_shift_u8 + te_quantized_linear_pmadd over 16-lane panels with any int8 weights == ops.quantized_linear."""
    g = torch.Generator().manual_seed(m * n)
    x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int32).to(torch.int8)
    w = _full_range(n, k, seed=k)
    assert not u8s8_safe(w)  # AVX2 would have to take the int16 kernel for these weights
    bias = torch.randint(-5000, 5000, (n,), generator=g, dtype=torch.int32)
    mult, shift = ops.requantize_params((torch.rand(n, generator=g, dtype=torch.float64) + 0.5) * 0.1 / k)
    x_zp, out_zp, k4 = 3, -2, (k + 3) // 4

    xt = te.placeholder((m, k), "int8", name="x")
    shifted = _unscheduled([xt, te_shift_u8(xt, k4)], x)
    a = te.placeholder((m, k4, 4), "uint8", name="a")
    b = te.placeholder(((n + 15) // 16, k4, 16, 4), "int8", name="b")
    folded = _u8s8_bias(w, bias, x_zp)
    bias_arg = _panels(folded, 16) if narrow else folded
    bt = te.placeholder(tuple(bias_arg.shape), str(bias_arg.dtype).replace("torch.", ""), name="bias")
    mt, st = te.placeholder((n,), "int32", name="mult"), te.placeholder((n,), "int32", name="shift")
    y = te_quantized_linear_pmadd(a, b, bt, mt, st, out_zp, n, narrow)
    name = unique_name("fx_test_vnni_linear")
    module = compile_te([a, b, bt, mt, st, y], CPUInt8GemmVNNI(), vnni_host, name)
    got = _run(
        module, name, torch.from_numpy(shifted), pack_gemm_weights(w, 16), bias_arg, mult, shift, out=((m, n), "int8")
    )
    expected = ops.quantized_linear(x, x_zp, w, bias, mult, shift, out_zp)
    np.testing.assert_array_equal(got, expected.numpy())
    assert len(np.unique(got)) > 10


def _pack_conv(w: torch.Tensor, lanes: int) -> torch.Tensor:
    """OIHW int8 as ``[O/L, KH, KW, C/4, L, 4]``, zero-padded (what the converter's layout_transform makes)."""
    o, c = w.shape[:2]
    w = torch.nn.functional.pad(w, (0, 0, 0, 0, 0, -c % 4, 0, -o % lanes))
    o2, c2, kh, kw = w.shape
    return w.reshape(o2 // lanes, lanes, c2 // 4, 4, kh, kw).permute(0, 4, 5, 2, 1, 3).contiguous()


# (in channels, out channels, kernel, stride, [top, left, bottom, right], dilation, input H x W, channels last)
CONVS = {
    "3x3-pad1": (32, 64, 3, 1, [1, 1, 1, 1], 1, (14, 14), False),
    "3x3-nhwc": (64, 48, 3, 1, [1, 1, 1, 1], 1, (7, 9), True),
    "stride2-odd-c": (5, 24, 3, 2, [1, 1, 1, 1], 1, (7, 7), False),
    "1x1-odd-c": (13, 20, 1, 1, [0, 0, 0, 0], 1, (5, 7), False),
    "stem-7x7-s2": (3, 16, 7, 2, [3, 3, 3, 3], 1, (15, 15), False),
    "dilated-asym": (12, 18, 3, 1, [0, 1, 2, 1], 2, (11, 9), True),
}


@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_16_lanes_matches_the_reference(vnni_host: tvm.target.Target, case: str) -> None:
    """te_conv_shift_u8 + te_quantized_conv2d_pmadd over 16-lane weights, any int8 weights == ops.quantized_conv2d."""
    cin, cout, k, s, pad, d, (h, wd), channels_last = CONVS[case]
    g = torch.Generator().manual_seed(len(case))
    x = torch.randint(-128, 128, (2, cin, h, wd), generator=g, dtype=torch.int32).to(torch.int8)
    w = _full_range(cout, cin, k, k, seed=cin)
    bias = torch.randint(-5000, 5000, (cout,), generator=g, dtype=torch.int32)
    mult, shift = ops.requantize_params(
        (torch.rand(cout, generator=g, dtype=torch.float64) + 0.5) * 0.1 / (cin * k * k)
    )
    x_zp, out_zp, narrow = 5, -3, case != "stride2-odd-c"

    x_in = x.permute(0, 2, 3, 1).contiguous() if channels_last else x
    xt = te.placeholder(tuple(x_in.shape), "int8", name="x")
    prologue = te_conv_shift_u8(xt, x_zp, tuple(pad), channels_last)
    padded = _unscheduled([xt, prologue], x_in)
    p = te.placeholder(padded.shape, "uint8", name="p")
    packed = _pack_conv(w, 16)
    b = te.placeholder(tuple(packed.shape), "int8", name="b")
    folded = _u8s8_bias(w, bias, x_zp)
    bias_arg = _panels(folded, 16) if narrow else folded
    bt = te.placeholder(tuple(bias_arg.shape), str(bias_arg.dtype).replace("torch.", ""), name="bias")
    mt, st = te.placeholder((cout,), "int32", name="mult"), te.placeholder((cout,), "int32", name="shift")
    attrs = ((s, s), tuple(pad), (d, d), (1,))
    y = te_quantized_conv2d_pmadd(p, b, bt, mt, st, out_zp, attrs, cout, narrow, None, channels_last)
    name = unique_name("fx_test_vnni_conv")
    module = compile_te([p, b, bt, mt, st, y], CPUInt8Conv2dVNNI(), vnni_host, name)
    out = (tuple(int(v) for v in y.shape), "int8")
    got = _run(module, name, torch.from_numpy(padded), packed, bias_arg, mult, shift, out=out)
    expected = ops.quantized_conv2d(x, x_zp, w, bias, mult, shift, out_zp, [s, s], pad, [d, d], 1)
    if channels_last:
        expected = expected.permute(0, 2, 3, 1)
    np.testing.assert_array_equal(got, expected.numpy())
    assert "vpdpbusd" in assembly(module)


def test_batched_matmul_16_lanes_takes_vpdpwssd(vnni_host: tvm.target.Target) -> None:
    """The s16 form (activation x activation) over 16-lane panels: vpdpwssd, exact."""
    batch, m, k, n = [2, 3], 12, 40, 32  # N % L != 0 falls back (AVX2 too): the epilogue cannot move under the tile
    g = torch.Generator().manual_seed(7)
    a = torch.randint(-128, 128, (*batch, m, k), generator=g, dtype=torch.int32).to(torch.int8)
    b = torch.randint(-128, 128, (*batch, k, n), generator=g, dtype=torch.int32).to(torch.int8)
    a_zp, b_zp, mult, shift, out_zp = 3, -2, 1 << 30, 8, 1
    i64 = lambda *dims: [tvm.tirx.const(d, "int64") for d in dims]  # noqa: E731  relax's shapes are int64
    at, bt = te.placeholder(i64(*batch, m, k), "int8", name="a"), te.placeholder(i64(*batch, k, n), "int8", name="b")
    a16 = _unscheduled([at, te_widen_rows(at, a_zp, k // 2)], a)
    b16 = _unscheduled([bt, te_pack_activation(bt, b_zp, k // 2, lanes=16)], b)
    assert b16.shape == (6 * 2, k // 2, 16, 2)
    a16t, b16t = (
        te.placeholder(i64(*a16.shape), "int16", name="a16"),
        te.placeholder(i64(*b16.shape), "int16", name="b16"),
    )
    y = te_quantized_matmul_pmadd(a16t, b16t, mult, shift, out_zp, i64(*batch), tvm.tirx.const(m, "int64"), n, True)
    name = unique_name("fx_test_vnni_matmul")
    module = compile_te([a16t, b16t, y], CPUInt8GemmVNNI(), vnni_host, name)
    got = _run(module, name, torch.from_numpy(a16), torch.from_numpy(b16), out=((*batch, m, n), "int8"))
    expected = ops.quantized_matmul(a, a_zp, b, b_zp, mult, shift, out_zp)
    np.testing.assert_array_equal(got, expected.numpy())
    assert "vpdpwssd" in assembly(module)


def test_microbench_reports_an_exact_run(vnni_host: tvm.target.Target) -> None:
    result = microbench(32, 96, 48, lanes=16, threads=1, repeat=1)
    assert result["exact"] and result["gops"] > 0 and result["lanes"] == 16
    assert {"ms", "gops", "peak_gops", "fraction_of_peak", "cpu"} <= set(result)


# ---------------------------------------------------------------- through fxpress.compile (VnniISA, AVX512-VNNI hosts)


def _vnni_spec() -> TargetSpec:
    """The x86-vnni preset with this package's lowering and rules (`VnniISA`), built for this host."""
    spec = resolve_target("x86-vnni", num_threads=1)
    isa = VnniISA(**{f.name: getattr(spec.isa, f.name) for f in dataclasses.fields(spec.isa)})
    return dataclasses.replace(spec, isa=isa, target=host_target(1))


def test_compiled_linear_takes_zmm_vpdpbusd_with_any_weights(vnni_host: tvm.target.Target) -> None:
    from test_quant_ops import QLinear

    k, n = 384, 200
    model = QLinear(k, n, seed=11)
    with torch.no_grad():
        model.w[:, :4] = torch.tensor([-128, -128, 127, 127], dtype=torch.int8)  # vpmaddubsw would saturate
    assert not u8s8_safe(model.w)
    x = torch.randn(48, k, generator=torch.Generator().manual_seed(3)) * 3
    compiled = fxpress.compile(fxpress.capture(model, (x,)), target=_vnni_spec())
    yq, y = compiled(x.numpy())
    ref_q, ref = model(x)
    np.testing.assert_array_equal(yq, ref_q.numpy())
    np.testing.assert_array_equal(y, ref.numpy())
    asm = assembly(compiled.executable.mod)
    assert re.search(r"vpdpbusd\s.*%zmm", asm) and "vpmaddubsw" not in asm
    # the weights travel as int8 panels [N/16, K/4, 16, 4]
    assert any(p.shape == ((n + 15) // 16, k // 4, 16, 4) and str(p.dtype) == "int8" for p in compiled.params)


def test_compiled_convs_take_16_lane_vpdpbusd(vnni_host: tvm.target.Target) -> None:
    from test_quant_conv import CONVS as CASES
    from test_quant_conv import QConvs

    model = QConvs(x_zp=-20)
    g = torch.Generator().manual_seed(6)
    xs = [torch.randn(2, CASES[case][0], *CASES[case][-1], generator=g) * 3 for case in sorted(CASES)]
    compiled = fxpress.compile(fxpress.capture(model, tuple(xs)), target=_vnni_spec())
    got, want = compiled(*[x.numpy() for x in xs]), model(*xs)
    for i, case in enumerate(sorted(CASES)):
        np.testing.assert_array_equal(got[2 * i], want[2 * i].numpy(), err_msg=case)
    assert re.search(r"vpdpbusd\s.*%zmm", assembly(compiled.executable.mod))
    assert any(len(p.shape) == 6 and p.shape[4] == 16 for p in compiled.params)  # [O/16, KH, KW, C/4, 16, 4]
