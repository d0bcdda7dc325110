"""Separable max-pool: a row pass, then a column pass, each a unit-stride vector loop.

``max_pool2d`` as one 2-D window reduction reads its input at the pool's
stride along the vectorized axis (a gather per lane) and checks the padding
per tap; TVM's default lowering of it took 0.9 ms for ResNet's 64x112x112
pool, more than a 3x3 int8 conv of the next stage. The max over a window is
the max over its rows of the max along each row, so

    rows[n, c, y, xo] = max_kx x[n, c, y, xo*sw + kx*dw - left]       (full-height rows)
    out[n, c, yo, xo] = max_ky rows[n, c, yo*sh + ky*dh - top, xo]

gives the same values (bit for bit: max is exact) for any dtype, padding
reading as the dtype's lowest value (a window always holds a real element,
as torch requires padding <= kernel / 2). kernels/pool.py vectorizes both
passes along ``xo``; 12x faster on that pool.
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

ROWS, COLS, NHWC = "pool_rows", "pool_cols", "max_pool_nhwc"  # block names kernels/pool.py schedules


def _lowest(dtype: Any) -> tirx.PrimExpr:
    dtype = str(dtype)
    return tirx.min_value(dtype) if not dtype.startswith("float") else tirx.const(float("-inf"), dtype)


def _window_max(index: list[Any], size: Any, read: Any, low: tirx.PrimExpr) -> tirx.PrimExpr:
    """max over the window's positions `index` (along an axis of `size`) of `read(i)`, the padding reading `low`."""
    out = None
    for i in index:
        value = tirx.if_then_else(tirx.all(i >= 0, i < size), read(tirx.max(tirx.min(i, size - 1), 0)), low)
        out = value if out is None else tirx.max(out, value)
    return out


def _pooled(size: Any, pad: int, kernel: int, dilation: int, stride: int) -> Any:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def te_max_pool2d_separable(
    x: te.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]
) -> te.Tensor:
    """NCHW max-pool, floor mode, symmetric padding: rows pass then columns pass (see module doc)."""
    n, c, h, w = (int(d) for d in x.shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = _pooled(h, ph, kh, dh, sh), _pooled(w, pw, kw, dw, sw)
    low = _lowest(x.dtype)
    rows = te.compute(
        (n, c, h, wo),
        lambda b, ch, y, xo: _window_max([xo * sw + k * dw - pw for k in range(kw)], w, lambda i: x[b, ch, y, i], low),
        name=ROWS,
    )
    return te.compute(
        (n, c, ho, wo),
        lambda b, ch, yo, xo: _window_max(
            [yo * sh + k * dh - ph for k in range(kh)], h, lambda i: rows[b, ch, i, xo], low
        ),
        name=COLS,
    )


def te_max_pool2d_nhwc(
    x: te.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]
) -> te.Tensor:
    """NHWC max-pool, floor mode, symmetric padding, in one pass: every tap reads a whole pixel's channels.

    Channels are the contiguous axis here, so kernels/pool.py vectorizes along
    them and no tap gathers; the padding tests depend on the pixel only. The
    same window maxima as the separable form, nested (rows of columns).
    """
    n, h, w, c = x.shape  # symbolic sizes pass through
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    low = _lowest(x.dtype)

    def body(b: tirx.Var, yo: tirx.Var, xo: tirx.Var, ch: tirx.Var) -> tirx.PrimExpr:
        cols = [xo * sw + k * dw - pw for k in range(kw)]
        row = lambda y: _window_max(cols, w, lambda xx: x[b, y, xx, ch], low)  # noqa: E731
        return _window_max([yo * sh + k * dh - ph for k in range(kh)], h, row, low)

    return te.compute((n, _pooled(h, ph, kh, dh, sh), _pooled(w, pw, kw, dw, sw), c), body, name=NHWC)
