"""Depthwise conv2d over "wide rows": every vector load contiguous, whatever the width or stride.

A depthwise conv vectorized along the output width needs a width the vector
divides: EfficientNet's 56, 28, 14 and 7 wide stages leave AVX-512's 16 lanes
a predicated tail (TVM then runs the loop scalar) and a stride-2 conv reads its
input at a stride. Here each channel's padded input plane is read as one flat
array with row pitch ``Q``, and the output is computed at every flat position
of a ``Ho x Q`` plane (the ``Q - Wo`` columns past the row end are garbage,
never read):

    wide[n, c, y, q] = sum_{ry, rx} plane[n, c, y * Q + q + (ry // s) * Q + rx // s] * w[c, ry, rx]
    out[n, c, y, x] = wide[n, c, y, x]

so output vector ``f .. f+15`` reads ``plane[f + off .. f + off + 15]`` for
each tap: one unaligned load, one broadcast weight, one FMA. A stride-``s``
conv first splits the padded input into ``s x s`` phase planes (the rows and
columns congruent to ``py, px`` mod ``s``), one per tap class ``(ry % s, rx %
s)``, so it is a stride-1 conv over them. ``wide`` has whole vectors (``Q``
and its row count ``R >= Ho`` are picked so), the schedule fuses its ``y, q``
into one vector axis; the planes get zero rows below for the last taps.

The padding block has the pattern ``decompose_padding`` splits into a zero
fill and an unconditional interior copy, both vectorizable.
kernels/conv2d.py schedules the function (`WIDE`, `PLANE`, `PHASES` name its
blocks); pack_weights.py rewrites depthwise ``conv2d`` calls into it on
targets with 16-lane vectors.
"""

from __future__ import annotations

from tvm import te, tirx

WIDE, PLANE, PHASES, OUT = "depthwise_wide", "depthwise_pad", "depthwise_phases", "depthwise_out"


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def wide_geometry(
    h: int, w: int, kernel: tuple[int, int], stride: int, padding: tuple[int, int, int, int], lanes: int
) -> tuple[int, int, int, int, int]:
    """``(Ho, Wo, Q, R, rows)``: output size, row pitch, wide rows (``R * Q`` whole vectors), phase-plane rows.

    The pitch is at least the padded width over the stride; pitch and rows
    are the pair with the fewest wide positions whose product is whole vectors.
    """
    kh, kw = kernel
    top, left, bottom, right = padding
    ho = (h + top + bottom - kh) // stride + 1
    wo = (w + left + right - kw) // stride + 1
    least = _ceil(w + left + right, stride)
    pitch, wide_rows = min(
        ((q, next(r for r in range(ho, ho + lanes + 1) if r * q % lanes == 0)) for q in range(least, least + lanes)),
        key=lambda qr: (qr[0] * qr[1], qr[0]),
    )
    reach = wide_rows * pitch - 1 + ((kh - 1) // stride) * pitch + (kw - 1) // stride  # the last vector's last tap
    rows = reach // pitch + 1
    while rows * pitch * stride * stride % lanes:  # whole vectors, so zero-filling a plane is one vector loop
        rows += 1
    return ho, wo, pitch, wide_rows, rows


def te_depthwise_conv2d_wide(
    x: te.Tensor, weight: te.Tensor, stride: int, padding: tuple[int, int, int, int], lanes: int
) -> te.Tensor:
    """NCHW depthwise conv (weight ``[C, 1, KH, KW]``, dilation 1, equal strides) computed over wide rows."""
    n, c, h, w = (int(d) for d in x.shape)
    kh, kw = (int(d) for d in weight.shape[2:])
    top, left, _, _ = padding
    ho, wo, pitch, wide_rows, rows = wide_geometry(h, w, (kh, kw), stride, padding, lanes)
    s = stride
    plane = te.compute(
        (n, c, rows * s, pitch * s),
        lambda b, ch, yy, xx: tirx.if_then_else(
            tirx.all(yy >= top, yy < h + top, xx >= left, xx < w + left),
            x[b, ch, yy - top, xx - left],
            tirx.const(0.0, x.dtype),
        ),
        name=PLANE,
    )
    if s > 1:
        phases = te.compute(
            (n, c, s, s, rows, pitch),
            lambda b, ch, py, px, a, q: plane[b, ch, a * s + py, q * s + px],
            name=PHASES,
        )
        read = lambda b, ch, ry, rx, i: phases[b, ch, ry % s, rx % s, i // pitch, i % pitch]  # noqa: E731
    else:
        read = lambda b, ch, ry, rx, i: plane[b, ch, i // pitch, i % pitch]  # noqa: E731
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    wide = te.compute(
        (n, c, wide_rows, pitch),
        lambda b, ch, y, q: te.sum(
            read(b, ch, ry, rx, y * pitch + q + (ry // s) * pitch + rx // s) * weight[ch, 0, ry, rx], axis=[ry, rx]
        ),
        name=WIDE,
    )
    return te.compute((n, c, ho, wo), lambda b, ch, y, xo: wide[b, ch, y, xo], name=OUT)
