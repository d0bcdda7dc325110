"""The factorizations themselves: a layer's weight as a chain of smaller dense layers (torch only).

    W[out, in] ~ B @ A                                   svd (linear, or conv: kxk in->r, 1x1 r->out)
    W[O, I, kh, kw] ~ U_out . C[r_out, r_in, kh, kw] . U_in^T      tucker2 (1x1, kxk core, 1x1)
    W[O, I, kh, kw] ~ H[O, r, 1, kw] * V[r, I, kh, 1]              spatial (kh x 1, then 1 x kw)

- ``svd``: the truncated SVD of the weight as a matrix ``[out, in*kh*kw]``,
  ``U_r S_r V_r^T``, with ``sqrt(S_r)`` given to each factor (``A = sqrt(S_r)
  V_r^T``, ``B = U_r sqrt(S_r)``), so both have the same scale (what int8
  per-channel quantization afterwards wants). For a conv the first factor is a
  kxk conv with ``r`` outputs and the layer's stride, padding and dilation; the
  second a 1x1 conv. By Eckart-Young the error is the smallest any rank-r
  matrix gives: ``||W - BA||_F^2 = sum of the dropped s_i^2``.
- ``tucker2`` (Kim et al., 2016): the conv's kernel as a 4-way tensor,
  compressed along its output and input channel modes only. ``U_out`` and
  ``U_in`` start as the leading left singular vectors of the mode-0 ``[O,
  I*kh*kw]`` and mode-1 ``[I, O*kh*kw]`` unfoldings (HOSVD) and are refined by
  a few rounds of HOOI (alternating: each factor the leading singular vectors
  of the kernel projected on the other), which never increases the error. The
  core ``C = W x_0 U_out^T x_1 U_in^T`` keeps the stride, padding and
  dilation; the error is ``||W||^2 - ||C||^2`` (orthogonal projections). A
  full input rank drops the first 1x1 (``U_in`` goes into the core), a full
  output rank the last.
- ``spatial`` (Jaderberg et al., 2014, scheme 2, by SVD as in Tai et al., 2016):
  the kernel reshaped to the matrix ``M[(i, y), (o, x)] = W[o, i, y, x]`` of
  shape ``[I*kh, O*kw]``; its truncated SVD gives ``r`` vertical ``kh x 1``
  filters over the input channels and ``O`` horizontal ``1 x kw`` filters over
  the ``r`` intermediate ones. Padding, stride and dilation split per axis:
  the vertical conv takes the height's, the horizontal one the width's. The
  error is the dropped singular values of ``M``, as for ``svd``.

The arithmetic runs in float64 and the factors are cast back to the weight's
dtype. A `Factorization` holds the stages, runs them in eager PyTorch
(`forward`, the reference the compiled graph is compared with), rebuilds the
dense weight they stand for (`dense`) and counts their weights. Grouped and
depthwise convs are not factorized (each group's kernel is already small; the
chain would need a grouped core): the planner leaves them alone and says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Pair = tuple[int, int]
HOOI_ROUNDS = 5


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D conv's stride, padding and dilation (groups is always 1 here)."""

    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)


@dataclass(frozen=True)
class Stage:
    """One layer of the chain: a linear (weight ``[out, in]``) or a conv (``[out, in, kh, kw]``, `geometry`)."""

    weight: torch.Tensor
    geometry: ConvGeometry | None = None  # None: a linear
    bias: bool = False  # takes the original layer's bias (the last stage)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b = bias if self.bias else None
        if self.geometry is None:
            return F.linear(x, self.weight, b)
        g = self.geometry
        return F.conv2d(x, self.weight, b, g.stride, g.padding, g.dilation)


@dataclass(frozen=True)
class Factorization:
    """A layer's weight as a chain of stages (see the module docstring)."""

    method: str  # svd, tucker2, spatial
    rank: tuple[int, ...]  # (r,) or, for tucker2, (r_in, r_out)
    stages: tuple[Stage, ...]
    shape: tuple[int, ...]  # the original weight's shape

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """What the chain computes: the original layer (with `bias`) with its weight replaced by `dense()`."""
        for stage in self.stages:
            x = stage(x, bias)
        return x

    @property
    def weights(self) -> int:
        """The number of weights of all stages (biases not counted)."""
        return sum(s.weight.numel() for s in self.stages)

    def dense(self) -> torch.Tensor:
        """The weight the chain stands for, in the original shape (float64)."""
        ws = [s.weight.double() for s in self.stages]
        if len(self.shape) == 2:  # linears: W = W_k ... W_1
            out = ws[0]
            for w in ws[1:]:
                out = w @ out
            return out
        if self.method == "spatial":  # [r, I, kh, 1] then [O, r, 1, kw]
            return torch.einsum("rih,orw->oihw", ws[0][..., 0], ws[1][:, :, 0, :])
        out = ws[0]  # a chain of 1x1 convs around one kxk: compose the channel maps
        for w in ws[1:]:
            if w.shape[2:] == (1, 1):
                out = torch.einsum("ab,bihw->aihw", w[:, :, 0, 0], out)
            else:
                out = torch.einsum("abhw,bi->aihw", w, out[:, :, 0, 0])
        return out

    def relative_error(self, weight: torch.Tensor) -> float:
        """``||W - dense()||_F / ||W||_F``."""
        w = weight.detach().double()
        norm = float(torch.linalg.norm(w))
        return float(torch.linalg.norm(w - self.dense())) / norm if norm else 0.0


@contextmanager
def one_thread() -> Iterator[None]:
    """Run LAPACK on one thread: layer-sized SVDs gain nothing from more, and on a loaded machine
    a threaded float64 SVD of a 64 x 256 matrix took 0.9 s against 3 ms on one thread (spinning workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with one_thread():
        return torch.linalg.svd(m.double(), full_matrices=False)


def _svdvals(m: torch.Tensor) -> torch.Tensor:
    with one_thread():
        return torch.linalg.svdvals(m.double())


def _leading(m: torch.Tensor, r: int) -> torch.Tensor:
    """The `r` leading left singular vectors of `m` (columns)."""
    return _svd(m)[0][:, :r]


@dataclass(frozen=True)
class Whitening:
    """``C^(1/2)`` and its inverse for a layer's input second moment ``C = E[x x^T]`` (data-aware SVD).

    ``||X (W - W')^T||_F = ||(W - W') C^(1/2)||_F`` for inputs X with ``X^T X = n C``,
    so truncating the SVD of ``W C^(1/2)`` and mapping back with ``C^(-1/2)``
    gives the rank-r weight with the smallest output error on those inputs
    (SVD-LLM's truncation-aware whitening, with a symmetric root instead of a
    Cholesky factor). ``damping`` times the mean eigenvalue is added to every
    eigenvalue (GPTQ's 1 %), so directions the data never excites do not blow
    up the first factor; at full rank the product is still exactly W.
    """

    root: torch.Tensor  # [in, in], float64
    inverse: torch.Tensor

    @classmethod
    def of(cls, moment: torch.Tensor, damping: float = 0.01) -> Whitening:
        c = moment.detach().double()
        with one_thread():
            lam, q = torch.linalg.eigh((c + c.T) / 2)
        lam = lam.clamp(min=0.0)
        lam = lam + damping * (float(lam.mean()) or 1.0)
        return cls((q * lam.sqrt()) @ q.T, (q * lam.rsqrt()) @ q.T)


def svd_spectrum(weight: torch.Tensor, whitening: Whitening | None = None) -> torch.Tensor:
    """Singular values of the weight as a matrix ``[out, in*kh*kw]`` (whitened: of ``W C^(1/2)``)."""
    m = weight.detach().double().reshape(weight.shape[0], -1)
    return _svdvals(m if whitening is None else m @ whitening.root)


def spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``M[(i, y), (o, x)] = W[o, i, y, x]``, shape ``[I*kh, O*kw]`` (what ``spatial`` truncates)."""
    o, i, kh, kw = weight.shape
    return weight.detach().double().permute(1, 2, 0, 3).reshape(i * kh, o * kw)


def spatial_spectrum(weight: torch.Tensor) -> torch.Tensor:
    return _svdvals(spatial_matrix(weight))


def tucker_spectra(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of the mode-1 (input, ``[I, O*kh*kw]``) and mode-0 (output) unfoldings."""
    w = weight.detach().double()
    return _svdvals(w.transpose(0, 1).reshape(w.shape[1], -1)), _svdvals(w.reshape(w.shape[0], -1))


def svd_factors(
    weight: torch.Tensor, rank: int, geometry: ConvGeometry | None = None, whitening: Whitening | None = None
) -> Factorization:
    """``W ~ B A``: a linear ``[r, in]`` then ``[out, r]`` (a conv: kxk ``[r, I, kh, kw]`` then 1x1 ``[O, r]``).

    With `whitening` (inputs of the matrix's width): the SVD of ``W C^(1/2)``,
    ``A = sqrt(S_r) V_r^T C^(-1/2)``, the factors with the least output error on the data.
    """
    out = weight.shape[0]
    m = weight.detach().double().reshape(out, -1)
    u, s, vh = _svd(m if whitening is None else m @ whitening.root)
    root = s[:rank].sqrt()
    a = root[:, None] * vh[:rank]
    a = (a if whitening is None else a @ whitening.inverse).reshape(rank, *weight.shape[1:])
    b = u[:, :rank] * root[None, :]
    if weight.dim() == 4:
        b = b[:, :, None, None]
    dtype = weight.dtype
    first = Stage(a.to(dtype), geometry)
    last = Stage(b.to(dtype), None if geometry is None else ConvGeometry(), bias=True)
    return Factorization("svd", (rank,), (first, last), tuple(weight.shape))


def tucker2_factors(
    weight: torch.Tensor,
    rank_in: int,
    rank_out: int,
    geometry: ConvGeometry,
    rounds: int = HOOI_ROUNDS,
) -> Factorization:
    """Tucker-2: 1x1 ``[r_in, I]``, kxk core ``[r_out, r_in, kh, kw]`` (the geometry), 1x1 ``[O, r_out]``."""
    w = weight.detach().double()
    o, i = w.shape[:2]
    u_out = _leading(w.reshape(o, -1), rank_out)
    u_in = _leading(w.transpose(0, 1).reshape(i, -1), rank_in)
    for _ in range(rounds if (rank_in < i and rank_out < o) else 0):  # HOOI; with one mode full, HOSVD is optimal
        u_out = _leading(torch.einsum("oihw,ib->obhw", w, u_in).reshape(o, -1), rank_out)
        u_in = _leading(torch.einsum("oihw,oa->iahw", w, u_out).reshape(i, -1), rank_in)
    core = torch.einsum("oihw,oa,ib->abhw", w, u_out, u_in)
    stages: list[Stage] = []
    dtype = weight.dtype
    if rank_in < i:
        stages.append(Stage(u_in.T[:, :, None, None].to(dtype), ConvGeometry()))
    else:  # a full input rank: U_in is orthogonal, fold it into the core
        core = torch.einsum("abhw,ib->aihw", core, u_in)
    if rank_out < o:
        stages.append(Stage(core.to(dtype), geometry))
        stages.append(Stage(u_out[:, :, None, None].to(dtype), ConvGeometry(), bias=True))
    else:
        stages.append(Stage(torch.einsum("oa,abhw->obhw", u_out, core).to(dtype), geometry, bias=True))
    return Factorization("tucker2", (rank_in, rank_out), tuple(stages), tuple(weight.shape))


def spatial_factors(weight: torch.Tensor, rank: int, geometry: ConvGeometry) -> Factorization:
    """Jaderberg's scheme 2: ``[r, I, kh, 1]`` (the height's geometry), then ``[O, r, 1, kw]`` (the width's)."""
    o, i, kh, kw = weight.shape
    u, s, vh = _svd(spatial_matrix(weight))
    root = s[:rank].sqrt()
    vertical = (u[:, :rank] * root).reshape(i, kh, rank).permute(2, 0, 1)[..., None]
    horizontal = (vh[:rank].T * root).reshape(o, kw, rank).permute(0, 2, 1)[:, :, None, :]
    (sh, sw), (ph, pw), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    dtype = weight.dtype
    first = Stage(vertical.contiguous().to(dtype), ConvGeometry((sh, 1), (ph, 0), (dh, 1)))
    second = Stage(horizontal.contiguous().to(dtype), ConvGeometry((1, sw), (0, pw), (1, dw)), bias=True)
    return Factorization("spatial", (rank,), (first, second), tuple(weight.shape))


def energy_rank(spectrum: torch.Tensor, energy: float) -> int:
    """The smallest rank keeping `energy` of ``sum(s_i^2)`` (1 for a zero spectrum)."""
    sq = spectrum.double() ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(sq, 0) / total
    return min(int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype))) + 1, len(sq))


def kept_energy(spectrum: torch.Tensor, rank: int) -> float:
    """The fraction of ``sum(s_i^2)`` the leading `rank` values hold."""
    sq = spectrum.double() ** 2
    total = float(sq.sum())
    return float(sq[:rank].sum()) / total if total else 1.0


def tail_error(spectrum: torch.Tensor, rank: int) -> float:
    """``sqrt(sum of the dropped s_i^2) / ||s||``: the relative error of a rank-`rank` truncation."""
    return math.sqrt(max(0.0, 1.0 - kept_energy(spectrum, rank)))
