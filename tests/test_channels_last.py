"""The TVM backend's channels-last rewrite: where permutes go, that values never change, what stays NCHW."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.fx
from conftest import randomize_bn
from torch import nn

import fxpress
from fxpress.backends.tvm import channels_last
from fxpress.backends.tvm.channels_last import TO_NCHW, TO_NHWC, lower_channels_last
from fxpress.backends.tvm.compile import import_graph
from fxpress.backends.tvm.lower import as_pass, lowering_stages
from fxpress.backends.tvm.targets import resolve_target
from fxpress.ir import layout_ops, ops
from fxpress.ir.rewrite import rewrite
from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe

aten = torch.ops.aten
X86 = resolve_target("x86", num_threads=1)
needs_avx2 = pytest.mark.skipif(
    not X86.isa.channels_last_int8, reason=f"the host's ISA {X86.isa.name} has no NHWC int8 convs"
)


class MiniResNet(nn.Module):
    """A ResNet in small: stem conv + max-pool, a basic block, a strided block with a 1x1 shortcut, a depthwise conv."""

    def __init__(self) -> None:
        super().__init__()

        def conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1) -> nn.Sequential:
            conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)
            return nn.Sequential(conv, randomize_bn(nn.BatchNorm2d(cout)))

        self.stem, self.pool = conv_bn(3, 16, 5, 2), nn.MaxPool2d(3, 2, 1)
        self.a1, self.a2 = conv_bn(16, 16, 3, 1), conv_bn(16, 16, 3, 1)
        self.b1, self.b2, self.down = conv_bn(16, 24, 3, 2), conv_bn(24, 24, 3, 1), conv_bn(16, 24, 1, 2)
        self.dw = conv_bn(24, 24, 3, 1, groups=24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.stem(x)))
        x = torch.relu(x + self.a2(torch.relu(self.a1(x))))
        x = torch.relu(self.down(x) + self.b2(torch.relu(self.b1(x))))
        x = torch.relu(self.dw(x))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def _quantized(model: nn.Module, x: torch.Tensor) -> fxpress.Graph:
    g = torch.Generator().manual_seed(11)
    data = [(torch.randn(x.shape, generator=g),) for _ in range(4)]
    passes = [FoldBatchNorm(), Observe(per_channel=True, weight_reduce_range=True), Calibrate(data=data), FoldQDQ()]
    return fxpress.optimize(fxpress.capture(model.eval(), (x,)), passes)


@pytest.fixture(scope="module")
def mini() -> tuple[fxpress.Graph, torch.Tensor]:
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    return _quantized(MiniResNet(), x), x


def _calls(graph: fxpress.Graph, target: object) -> list[torch.fx.Node]:
    return [n for n in graph.fx.nodes if n.op == "call_function" and n.target == target]


@needs_avx2
def test_convs_go_nhwc_and_permutes_cancel_between_them(mini) -> None:
    graph, _ = mini
    out, count = lower_channels_last(graph, X86)
    assert count == 6  # stem, a1, a2, b1, b2, down; not the depthwise conv
    assert len(_calls(out, layout_ops.quantized_conv2d_float_nhwc._opoverload)) == 6
    assert len(_calls(out, layout_ops.max_pool2d_nhwc._opoverload)) == 1
    assert not _calls(out, aten.max_pool2d.default)
    permutes = [list(n.args[1]) for n in _calls(out, aten.permute.default)]
    # one into the stem, one out before the depthwise conv; none between the six convs
    assert sorted(permutes) == sorted([TO_NHWC, TO_NCHW])
    dw = [n for n in out.fx.nodes if n.target == ops.quantized_conv2d_float._opoverload]
    assert len(dw) == 1 and dw[0].args[-1] == 24


@needs_avx2
def test_rewritten_graph_computes_the_same_integers(mini) -> None:
    graph, x = mini
    before = graph.gm.code
    out, _ = lower_channels_last(graph, X86)
    assert graph.gm.code == before  # the user's graph is not touched
    assert torch.equal(out.gm(x), graph.gm(x))


@pytest.mark.tvm
def test_compiled_matches_eager_bit_for_bit(mini) -> None:
    """The NHWC prologues, epilogues (float-out and add/ReLU/quantize fused) and pool against the eager reference."""
    graph, x = mini
    compiled = fxpress.compile(graph, target="x86", num_threads=1)
    want = graph.gm(x).numpy()
    np.testing.assert_array_equal(compiled(x.numpy()), want)


@needs_avx2
@pytest.mark.tvm
def test_lowered_module_transposes_only_where_the_layout_changes(mini) -> None:
    """One transpose, into the depthwise conv: the stem's prologue packs the NCHW input itself."""
    graph, _ = mini
    mod, _, _ = import_graph(graph, X86)
    stages = lowering_stages(X86)
    fused = as_pass(stages[: [name for name, _ in stages].index("fuse-tir") + 1])(mod)
    called = re.findall(r"R\.call_tir\((?:cls\.)?(\w+)", fused["main"].script())
    assert len([f for f in called if "transpose" in f]) == 1, called
    assert len([f for f in called if "max_pool2d_nhwc" in f]) == 1, called
    assert len([f for f in called if "conv_shift_u8" in f]) == 6, called


@pytest.mark.tvm
def test_dynamic_batch_height_and_width() -> None:
    """Symbolic N, H, W through the NHWC convs, the NHWC pool and the depthwise conv after them."""
    torch.manual_seed(5)
    batch, size = torch.export.Dim("batch", max=64), torch.export.Dim("size", min=16, max=256)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    graph = fxpress.capture(MiniResNet().eval(), (x,), dynamic_shapes=({0: batch, 2: size, 3: size},))
    g = torch.Generator().manual_seed(11)
    data = [(torch.randn(2, 3, 32, 32, generator=g),) for _ in range(4)]
    passes = [FoldBatchNorm(), Observe(per_channel=True, weight_reduce_range=True), Calibrate(data=data), FoldQDQ()]
    quantized = fxpress.optimize(graph, passes)
    compiled = fxpress.compile(quantized, target="x86", num_threads=1)
    for shape in ((1, 3, 32, 32), (3, 3, 40, 40)):
        x = torch.randn(*shape, generator=g)
        np.testing.assert_array_equal(compiled(x.numpy()), quantized.gm(x).numpy())


def _permute_chain(in_place_readers: int) -> torch.fx.Graph:
    """x -> to_nchw -> relu_ (+ `in_place_readers - 1` more readers of the permute) -> outputs."""
    fx = torch.fx.Graph()
    x = fx.placeholder("x")
    x.meta["val"] = torch.empty(1, 4, 4, 8)
    p = fx.call_function(aten.permute.default, (x, TO_NCHW))
    r = fx.call_function(aten.relu_.default, (p,))
    others = [fx.call_function(aten.neg.default, (p,)) for _ in range(in_place_readers - 1)]
    fx.output((r, *others))
    return fx


def test_in_place_relu_sinks_only_when_nothing_else_reads_its_input() -> None:
    alone = _permute_chain(1)
    assert rewrite(alone, [channels_last.sink_permute]) == 1
    assert [n.target for n in alone.nodes if n.op == "call_function"] == [aten.relu.default, aten.permute.default]
    shared = _permute_chain(2)
    assert rewrite(shared, [channels_last.sink_permute]) == 0  # neg would see relu_'s in-place result


def test_permute_pairs_cancel_and_other_ops_stop_the_sinking() -> None:
    fx = torch.fx.Graph()
    x = fx.placeholder("x")
    nchw = fx.call_function(aten.permute.default, (x, TO_NCHW))
    back = fx.call_function(aten.permute.default, (nchw, TO_NHWC))
    mean = fx.call_function(aten.mean.dim, (nchw, [2, 3]))  # layout-dependent: the permute must stay
    fx.output((back, mean))
    # the pair cancels (once: the mean keeps the first permute); the mean stops the sinking
    assert rewrite(fx, [channels_last.sink_permute, channels_last.cancel_permutes]) == 1
    assert [n.target for n in fx.nodes if n.op == "call_function"] == [aten.permute.default, aten.mean.dim]
    assert fx.output_node().args[0][0] is x


def test_binary_ops_sink_only_when_both_sides_are_permuted() -> None:
    fx = torch.fx.Graph()
    a, b = fx.placeholder("a"), fx.placeholder("b")
    pa = fx.call_function(aten.permute.default, (a, TO_NCHW))
    mixed = fx.call_function(aten.add.Tensor, (pa, b))
    fx.output(mixed)
    assert rewrite(fx, [channels_last.sink_permute]) == 0
    pb = fx.call_function(aten.permute.default, (b, TO_NCHW))
    mixed.args = (pa, pb)
    assert rewrite(fx, [channels_last.sink_permute]) == 1
    adds = [n for n in fx.nodes if n.target == aten.add.Tensor]
    assert len(adds) == 1 and adds[0].args == (a, b)


def test_no_rewrite_off_avx2(mini) -> None:
    graph, _ = mini
    for target in ("arm", "cuda", "x86-64"):
        out, count = lower_channels_last(graph, resolve_target(target, cross=True))
        assert out is graph and count == 0


def test_nhwc_ops_are_the_nchw_ops_transposed() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-128, 128, (2, 6, 9, 7), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (10, 7, 3, 3), generator=g, dtype=torch.int8)
    bias = torch.randint(-999, 999, (10,), generator=g, dtype=torch.int32)
    mult, shift = ops.requantize_params(torch.full((10,), 0.002, dtype=torch.float64))
    attrs = ([2, 1], [1, 0, 2, 1], [1, 1], 1)
    nchw, nhwc = x.permute(0, 3, 1, 2), x
    want = ops.quantized_conv2d(nchw, 3, w, bias, mult, shift, -2, *attrs)
    got = layout_ops.quantized_conv2d_nhwc(nhwc, 3, w, bias, mult, shift, -2, *attrs)
    assert torch.equal(got, want.permute(0, 2, 3, 1))
    scale = torch.rand(10, generator=g)
    want_f = ops.quantized_conv2d_float(nchw, 3, w, bias, scale, *attrs)
    assert torch.equal(
        layout_ops.quantized_conv2d_float_nhwc(nhwc, 3, w, bias, scale, *attrs), want_f.permute(0, 2, 3, 1)
    )
    pool = layout_ops.max_pool2d_nhwc(nhwc, [3, 3], [2, 2], [1, 1], [1, 1])
    assert torch.equal(pool, nn.functional.max_pool2d(nchw.float(), 3, 2, 1).to(torch.int8).permute(0, 2, 3, 1))
