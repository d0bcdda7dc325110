"""Ops the coverage zoo found compiled wrongly or not at all (fxpress/backends/tvm/aten_fixes.py and the rules).

Each case is the smallest model that showed it, compared with eager PyTorch: a conv whose result is
padded asymmetrically (the border was never written: NaN), integer true division (was integer
division), cumsum (the VM could not run it), a batched matmul over a reduction of length 1 (dlight's
GEMV rule asserted), and a view after sdpa that fails only when re-traced on the decomposed graph.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxpress

pytestmark = pytest.mark.tvm


def _check(model: nn.Module, *inputs: torch.Tensor, rtol: float = 1e-5) -> None:
    model = model.eval()
    with torch.no_grad():
        want = model(*inputs)
    got = fxpress.compile(fxpress.capture(model, inputs), target="x86", tuning=False)(*inputs)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [nn.Conv2d(8, 48, 1, bias=False), nn.ZeroPad2d((0, 1, 0, 1))],
        lambda: [nn.Conv2d(8, 48, 1), nn.SiLU(), nn.ZeroPad2d((0, 1, 0, 1))],
        lambda: [nn.Conv2d(8, 16, 3, padding=1), nn.ZeroPad2d((0, 1, 0, 1))],
        lambda: [nn.Conv2d(8, 16, 1), nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(16, 16, 3, 2, groups=16)],
    ],
    ids=["conv1x1-pad", "conv-silu-pad", "conv3x3-pad", "conv-pad-strided-depthwise"],
)
def test_conv_then_asymmetric_pad_writes_the_border(layers):
    torch.manual_seed(0)
    _check(nn.Sequential(*layers()), torch.randn(2, 8, 16, 16))


class TrueDiv(nn.Module):
    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + torch.log(pos.abs() / 4 + 1) + pos / pos.abs().clamp(min=1)  # i64 / int and i64 / i64 -> f32


def test_integer_true_division_is_float_division():
    _check(TrueDiv(), torch.randn(2, 8), torch.arange(-8, 8).reshape(2, 8))


class FloorDiv(nn.Module):
    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.div(pos, 3, rounding_mode="floor") + pos // 2


def test_integer_floor_division_stays_integer():
    _check(FloorDiv(), torch.arange(-8, 8).reshape(2, 8))


class Cumsum(nn.Module):
    def forward(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return x.cumsum(-1) + torch.cumsum(b != 0, 0).to(x.dtype) + b.cumsum(1)


def test_cumsum_of_float_bool_and_int():
    _check(Cumsum(), torch.randn(2, 8), torch.randint(0, 3, (2, 8)))


class Bmm(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


def test_batched_matmul_with_a_reduction_of_one():
    _check(Bmm(), torch.randn(8, 1, 1), torch.randn(8, 1, 16))


class ViewAfterSdpa(nn.Module):
    """GPT-2's attention tail: sdpa, transpose back without .contiguous(), then view (valid in eager)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(32, 32))
        self.b = nn.Parameter(torch.randn(32))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(8, 8, dtype=torch.bool).tril()[None, None].expand(2, -1, 8, 8)
        a = F.scaled_dot_product_attention(q, k, v, mask, scale=0.3536)
        a = a.reshape(2, -1, 8, 8).transpose(1, 2).reshape(2, 8, -1)
        return torch.addmm(self.b, a.view(-1, a.size(-1)), self.w).view(2, 8, 32)


def test_view_that_fails_on_the_decomposed_graph_is_compiled_as_reshape():
    g = torch.Generator().manual_seed(0)
    _check(ViewAfterSdpa(), *(torch.randn(2, 4, 8, 8, generator=g) for _ in range(3)), rtol=1e-4)


class Extremum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(-1) + x.amin(dim=(0, 2), keepdim=True).squeeze(-1) + torch.amax(x, 1).sum(-1, keepdim=True)


def test_amax_and_amin():
    _check(Extremum(), torch.randn(3, 4, 5))


class SelectLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, -1] * 2 + x[:, -2, 0].unsqueeze(-1) + x[-1, :, -1]


def test_select_with_a_negative_index_counts_from_the_end():
    _check(SelectLast(), torch.randn(2, 4, 5))


def test_select_with_a_negative_index_on_a_dynamic_dimension():
    model = SelectLast().eval()
    x = torch.randn(2, 4, 5)
    graph = fxpress.capture(model, (x,), dynamic_shapes=({2: torch.export.Dim("t", min=2)},))
    module = fxpress.compile(graph, target="x86", tuning=False)
    for t in (5, 9):
        y = torch.randn(2, 4, t)
        torch.testing.assert_close(module(y), model(y))


class Diff(nn.Module):
    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        d = torch.diff(pos, dim=-1, prepend=pos[:, :1] - 1) != 1  # transformers' packed-sequence check
        return torch.diff(x, n=2, dim=1, append=x[:, :2]) + d.to(x.dtype).sum(-1, keepdim=True)


def test_diff_with_prepend_append_and_n():
    _check(Diff(), torch.randn(2, 8), torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7]]))
