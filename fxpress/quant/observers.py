"""Observers: collect statistics of a tensor over calibration data and choose its quantization range.

An observer is fed tensors (`observe`), then gives the range it chose
(`range`) and the `QuantParams` that range has under its scheme (`qparams`).
Observers expect finite values (the ``calibrate`` pass rejects NaN and Inf with
the node's name before they get here) and ignore empty tensors.

=============== ================================================ ===============
kind            range                                            granularity
=============== ================================================ ===============
minmax          running min and max                              tensor, channel
moving-average  min, max averaged over batches (constant c)      tensor, channel
histogram       torch.ao's L2 search over a 2048-bin histogram   tensor
percentile      the p-th and (100-p)-th percentiles              tensor, channel
mse             the clip range [a*min, a*max], a in 0.01..1,     tensor, channel
                with the least squared rounding + clipping error
entropy         the |x| threshold with the least KL divergence   tensor
                between clipped and quantized distributions
=============== ================================================ ===============

Compatibility with torch.ao: ``minmax`` (per-tensor and per-channel),
``moving-average`` and ``histogram`` reproduce torch.ao.quantization's
MinMaxObserver, PerChannelMinMaxObserver, MovingAverage(PerChannel)MinMaxObserver
and HistogramObserver: the same statistics, the same histogram merging and the
same search, in the same float32 arithmetic, so scale and zero point are equal
on the same data (tests hold them to 1e-6 relative). The histogram search scans
the cumulative histogram with bisection instead of torch's element loops (the
same bins, about ten times faster).

Numerics: minmax never clips (each value moves by at most scale/2); the
others trade clipping of rare outliers for a finer step. ``percentile``,
``mse`` and ``entropy`` work on a histogram, so their ranges are exact to about
one bin width (1/2048 of the observed range; a few widths once the range has
grown over the batches, since re-binning spreads each old bin's mass evenly).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fxpress.quant.annotations import QuantParams
from fxpress.quant.scheme import QScheme, compute_qparams, fake_quantize


def _rows(x: torch.Tensor, axis: int) -> torch.Tensor:
    """`x` as [channels, values]: channel `axis` first, the rest flattened."""
    if axis >= x.dim():
        raise ValueError(f"channel axis {axis} but the tensor has {x.dim()} dimensions")
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


class Observer(ABC):
    """Base class: feed tensors with `observe`, then read `range` / `qparams`."""

    per_channel_ok: ClassVar[bool] = True

    def __init__(self, scheme: QScheme) -> None:
        if scheme.per_channel and not self.per_channel_ok:
            raise ValueError(f"{type(self).__name__} is per-tensor only; give a scheme without axis")
        self.scheme = scheme

    def observe(self, x: torch.Tensor) -> None:
        """Add the values of `x` (float; an empty tensor is ignored)."""
        if x.numel() == 0:
            return
        self._observe(x.detach().to(torch.float32))

    @abstractmethod
    def _observe(self, x: torch.Tensor) -> None: ...

    @property
    @abstractmethod
    def empty(self) -> bool:
        """True until some value was observed."""

    @abstractmethod
    def _range(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen (min, max): 0-dim per-tensor, one entry per channel otherwise."""
        if self.empty:
            raise ValueError(f"{type(self).__name__} has observed no values")
        return self._range()

    def qparams(self) -> QuantParams:
        """The scale and zero point of the chosen range under the scheme."""
        return QuantParams.from_range(*self.range(), self.scheme)


class MinMaxObserver(Observer):
    """Running min and max (torch.ao MinMaxObserver / PerChannelMinMaxObserver)."""

    def __init__(self, scheme: QScheme) -> None:
        super().__init__(scheme)
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.min_val is None

    def _current(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scheme.axis is None:
            return torch.aminmax(x)
        return torch.aminmax(_rows(x, self.scheme.axis), dim=1)

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = self._current(x)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
            return
        if lo.shape != self.min_val.shape:
            raise ValueError(f"channel count changed from {self.min_val.numel()} to {lo.numel()}")
        self.min_val, self.max_val = self._merge(self.min_val, lo, self.max_val, hi)

    def _merge(
        self, old_lo: torch.Tensor, lo: torch.Tensor, old_hi: torch.Tensor, hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.min(lo, old_lo), torch.max(hi, old_hi)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.min_val is not None and self.max_val is not None
        return self.min_val, self.max_val


class MovingAverageMinMaxObserver(MinMaxObserver):
    """min, max <- min, max + c * (batch min, max - min, max) (torch.ao MovingAverage*MinMaxObserver)."""

    def __init__(self, scheme: QScheme, averaging_constant: float = 0.01) -> None:
        super().__init__(scheme)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _merge(
        self, old_lo: torch.Tensor, lo: torch.Tensor, old_hi: torch.Tensor, hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.averaging_constant
        return old_lo + c * (lo - old_lo), old_hi + c * (hi - old_hi)


class HistogramObserver(Observer):
    """torch.ao's HistogramObserver: a running histogram and an approximate L2 search.

    The histogram spans the running [min, max] in `bins` bins; when a batch
    widens the range, the old histogram is upsampled 16x and re-binned. The
    search (from caffe2's norm minimization) trims the range from the sparser
    end, one step of 1e-5 of the mass at a time, while the L2 error of
    quantizing the histogram to 256 levels decreases.
    """

    per_channel_ok = False
    upsample_rate = 16
    dst_nbins = 256  # torch.ao uses 2 ** bits of the dtype, whatever the scheme's range

    def __init__(self, scheme: QScheme, bins: int = 2048) -> None:
        super().__init__(scheme)
        self.bins = bins
        self.histogram = torch.zeros(bins)
        self.min_val = torch.tensor(float("inf"))
        self.max_val = torch.tensor(float("-inf"))

    @property
    def empty(self) -> bool:
        return bool(self.min_val == float("inf"))

    def _observe(self, x: torch.Tensor) -> None:
        x_min, x_max = torch.aminmax(x)
        if self.empty:
            self.min_val, self.max_val = x_min, x_max
            self.histogram = torch.histc(x, self.bins, min=x_min.item(), max=x_max.item())
            return
        new_min, new_max = torch.min(self.min_val, x_min), torch.max(self.max_val, x_max)
        update = torch.histc(x, self.bins, min=new_min.item(), max=new_max.item())
        if new_min == self.min_val and new_max == self.max_val:
            self.histogram = self.histogram + update
            return
        self.histogram = self._combine(update, new_min, new_max).to(torch.float32)
        self.min_val, self.max_val = new_min, new_max

    def _combine(self, update: torch.Tensor, new_min: torch.Tensor, new_max: torch.Tensor) -> torch.Tensor:
        if self.min_val == self.max_val:  # the old histogram is one value: a spike
            spike = torch.histc(self.min_val, bins=self.bins, min=new_min.item(), max=new_max.item())
            return spike * torch.sum(self.histogram) + update
        n = self.bins * self.upsample_rate
        fine = self.histogram.repeat_interleave(self.upsample_rate) / self.upsample_rate
        bin_size = (self.max_val - self.min_val) / n
        mids = torch.linspace(self.min_val, self.max_val, n + 1)[:-1] + 0.5 * bin_size
        edges = torch.linspace(new_min, new_max, self.bins + 1)
        buckets = (torch.bucketize(mids, edges, right=True) - 1).clamp(0, self.bins - 1)
        return update + torch.bincount(buckets, weights=fine, minlength=self.bins)

    def _error(self, start: int, end: int) -> float:
        """L2 error of quantizing bins start..end to `dst_nbins` levels (torch.ao's float32 arithmetic)."""
        bin_width = (self.max_val.item() - self.min_val.item()) / self.bins
        dst_width = bin_width * (end - start + 1) / self.dst_nbins
        if dst_width == 0.0:
            return 0.0
        src_begin = (torch.arange(self.bins) - start) * bin_width
        src_end = src_begin + bin_width
        dst_of_begin = torch.clamp(torch.div(src_begin, dst_width, rounding_mode="floor"), 0, self.dst_nbins - 1)
        dst_of_end = torch.clamp(torch.div(src_end, dst_width, rounding_mode="floor"), 0, self.dst_nbins - 1)
        density = self.histogram / bin_width

        def norm(begin: torch.Tensor, end_: torch.Tensor) -> torch.Tensor:
            # density * integral of x^2 over [begin, end]
            return density * ((end_ * end_ * end_ - begin * begin * begin) / 3)

        half = torch.tensor(dst_width / 2)
        total = torch.zeros(self.bins)
        total += norm(src_begin - (dst_of_begin + 0.5) * dst_width, torch.ones(self.bins) * (dst_width / 2))
        total += (dst_of_end - dst_of_begin - 1) * norm(torch.tensor(-dst_width / 2), half)
        total += norm(torch.tensor(-dst_width / 2), src_end - (dst_of_end * dst_width + dst_width / 2))
        return total.sum().item()

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        bin_width = (self.max_val - self.min_val) / self.bins
        total = torch.sum(self.histogram).item()
        csum = torch.cumsum(self.histogram, dim=0).tolist()  # float32 values, exact as floats
        alpha, beta, step = 0.0, 1.0, 1e-5
        start, end = 0, self.bins - 1
        norm_min = float("inf")
        while alpha < beta:
            next_alpha, next_beta = alpha + step, beta - step
            # torch compares the float32 cumulative sums with float32 thresholds
            lo_q, hi_q = float(np.float32(next_alpha * total)), float(np.float32(next_beta * total))
            left = min(max(start, bisect.bisect_left(csum, lo_q)), end)
            right = max(min(end, bisect.bisect_right(csum, hi_q) - 1), start)
            next_start, next_end = start, end
            if left - start > end - right:
                next_start, alpha = left, next_alpha
            else:
                next_end, beta = right, next_beta
            if next_start == start and next_end == end:
                continue
            err = self._error(next_start, next_end)
            if err > norm_min:
                break
            norm_min, start, end = err, next_start, next_end
        return self.min_val + bin_width * start, self.min_val + bin_width * (end + 1)


class _ChannelHistogram:
    """Per-channel running histograms ([channels, bins], float64) over a growing range.

    When a batch widens a channel's range, each old bin's mass is split between
    the (at most two) new bins it overlaps, in proportion to the overlap.
    `magnitude` histograms |x| over [0, max |x|].
    """

    def __init__(self, bins: int, axis: int | None, magnitude: bool = False) -> None:
        if bins < 16:
            raise ValueError(f"a histogram needs at least 16 bins, got {bins}")
        self.bins, self.axis, self.magnitude = bins, axis, magnitude
        self.counts: torch.Tensor | None = None
        self.lo = torch.zeros(0, dtype=torch.float64)
        self.hi = torch.zeros(0, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        rows = (x.reshape(1, -1) if self.axis is None else _rows(x, self.axis)).to(torch.float64)
        if self.magnitude:
            rows = rows.abs()
        lo = torch.zeros(rows.shape[0], dtype=torch.float64) if self.magnitude else rows.amin(1)
        hi = rows.amax(1)
        if self.counts is None:
            self.lo, self.hi = lo, hi
            self.counts = torch.zeros(rows.shape[0], self.bins, dtype=torch.float64)
        elif lo.shape != self.lo.shape:
            raise ValueError(f"channel count changed from {self.lo.numel()} to {lo.numel()}")
        else:
            new_lo, new_hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
            if not (torch.equal(new_lo, self.lo) and torch.equal(new_hi, self.hi)):
                self.counts = self._rebin(new_lo, new_hi)
                self.lo, self.hi = new_lo, new_hi
        self.counts += self._histogram(rows)

    def width(self, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> torch.Tensor:
        lo, hi = self.lo if lo is None else lo, self.hi if hi is None else hi
        return (hi - lo) / self.bins

    def _scatter(self, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        flat = index + torch.arange(index.shape[0]).unsqueeze(1) * self.bins
        out = torch.zeros(index.shape[0] * self.bins, dtype=torch.float64)
        out.index_add_(0, flat.reshape(-1), weights.reshape(-1))
        return out.reshape(index.shape[0], self.bins)

    def _index(self, values: torch.Tensor, lo: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        safe = torch.where(width > 0, width, torch.ones_like(width)).unsqueeze(1)
        return ((values - lo.unsqueeze(1)) / safe).floor().clamp(0, self.bins - 1).to(torch.int64)

    def _histogram(self, rows: torch.Tensor) -> torch.Tensor:
        return self._scatter(self._index(rows, self.lo, self.width()), torch.ones_like(rows))

    def _rebin(self, new_lo: torch.Tensor, new_hi: torch.Tensor) -> torch.Tensor:
        assert self.counts is not None
        old_w, new_w = self.width(), self.width(new_lo, new_hi)
        starts = self.lo.unsqueeze(1) + torch.arange(self.bins, dtype=torch.float64) * old_w.unsqueeze(1)
        first = self._index(starts, new_lo, new_w)
        boundary = new_lo.unsqueeze(1) + (first + 1) * new_w.unsqueeze(1)
        safe_old = torch.where(old_w > 0, old_w, torch.ones_like(old_w)).unsqueeze(1)
        frac = torch.where(old_w.unsqueeze(1) > 0, ((boundary - starts) / safe_old).clamp(0, 1), 1.0)
        second = (first + 1).clamp(max=self.bins - 1)
        return self._scatter(first, self.counts * frac) + self._scatter(second, self.counts * (1 - frac))

    def centers(self) -> torch.Tensor:
        steps = torch.arange(self.bins, dtype=torch.float64) + 0.5
        return self.lo.unsqueeze(1) + steps * self.width().unsqueeze(1)

    def quantile(self, q: float) -> torch.Tensor:
        """The value below which a fraction `q` of each channel's mass lies (linear within a bin)."""
        assert self.counts is not None
        cum = self.counts.cumsum(1)
        target = q * cum[:, -1:]
        k = torch.searchsorted(cum, target).clamp(max=self.bins - 1)
        before = torch.where(k > 0, cum.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(target))
        inside = self.counts.gather(1, k)
        frac = torch.where(inside > 0, (target - before) / torch.where(inside > 0, inside, 1.0), 0.0).clamp(0, 1)
        return (self.lo.unsqueeze(1) + (k + frac) * self.width().unsqueeze(1)).squeeze(1)


class _HistogramBased(Observer):
    """Observers that choose a range from a `_ChannelHistogram`."""

    magnitude: ClassVar[bool] = False

    def __init__(self, scheme: QScheme, bins: int = 2048) -> None:
        super().__init__(scheme)
        self.hist = _ChannelHistogram(bins, scheme.axis, magnitude=self.magnitude)

    @property
    def empty(self) -> bool:
        return self.hist.counts is None

    def _observe(self, x: torch.Tensor) -> None:
        self.hist.add(x)

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        """float32, 0-dim per-tensor (as torch.ao returns it)."""
        t = t.to(torch.float32)
        return t.reshape(()) if self.scheme.axis is None else t


class PercentileObserver(_HistogramBased):
    """The range between the (100 - p)-th and the p-th percentile of the observed values."""

    def __init__(self, scheme: QScheme, percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(scheme, bins)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.percentile / 100
        return self._shape(self.hist.quantile(1 - p)), self._shape(self.hist.quantile(p))


class MSEObserver(_HistogramBased):
    """The clip range [a * min, a * max] (a = 1, 0.99, ..., 0.01) with the least squared error.

    The error of a candidate is that of fake-quantizing every bin's centre with
    the candidate's actual parameters under the scheme (so zero-point rounding
    and power-of-two scales are accounted for), weighted by the bin's count.
    Ties keep the wider range.
    """

    grid = 100

    def _occupied(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts, centres) of each channel's occupied bins, in bin order, left-aligned, padded with count 0.

        An empty bin adds exactly 0 to a candidate's error, so the search reads
        only these: a weight channel of 64 values fills at most 64 of its 2048
        bins, and a per-channel search then costs 64/2048 of one over all bins.
        """
        counts, centers = self.hist.counts, self.hist.centers()
        assert counts is not None
        occupied = counts > 0
        width = max(1, int(occupied.sum(1).max()))
        if width == counts.shape[1]:
            return counts, centers
        first = torch.argsort((~occupied).to(torch.int8), dim=1, stable=True)[:, :width]  # occupied bins first
        return counts.gather(1, first), centers.gather(1, first)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        counts, centers = self._occupied()
        lo, hi = self.hist.lo.clamp(max=0), self.hist.hi.clamp(min=0)
        best = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        rows = dataclasses.replace(self.scheme, axis=0)  # the histogram holds one row per channel
        for k in range(self.grid, 0, -1):
            cand_lo, cand_hi = (lo * (k / self.grid)).float(), (hi * (k / self.grid)).float()
            scale, zp = compute_qparams(cand_lo, cand_hi, rows)
            rounded = fake_quantize(centers, scale, zp, rows)
            err = (counts * (centers - rounded) ** 2).sum(1)
            better = err < best
            best = torch.where(better, err, best)
            best_lo = torch.where(better, cand_lo.double(), best_lo)
            best_hi = torch.where(better, cand_hi.double(), best_hi)
        return self._shape(best_lo), self._shape(best_hi)


class EntropyObserver(_HistogramBased):
    """The |x| threshold whose quantized distribution is closest (KL) to the clipped one (TensorRT's method).

    For each candidate threshold (bin i of the |x| histogram, from `levels` to
    all bins), P is the histogram up to i with the mass beyond folded into the
    last bin; Q merges those bins into `levels` groups and spreads each group's
    mass evenly over its non-empty bins. The threshold with the least KL(P||Q)
    wins. `levels` is the number of integer levels the magnitudes get: all of
    them for non-negative data under an affine scheme, half otherwise.
    """

    per_channel_ok = False
    magnitude = True

    def __init__(self, scheme: QScheme, bins: int = 2048) -> None:
        super().__init__(scheme, bins)
        self.signed_min = math.inf
        self.signed_max = -math.inf

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x)
        self.signed_min, self.signed_max = min(self.signed_min, lo.item()), max(self.signed_max, hi.item())
        super()._observe(x)

    def _threshold_bins(self, hist: np.ndarray, levels: int) -> int:
        best_i, best_kl = len(hist), math.inf
        for i in range(levels, len(hist) + 1):
            p = hist[:i].copy()
            p[-1] += hist[i:].sum()
            merged = i // levels
            group = np.minimum(np.arange(i) // merged, levels - 1)
            nonzero = hist[:i] != 0
            sums = np.bincount(group, weights=hist[:i], minlength=levels)
            counts = np.bincount(group, weights=nonzero, minlength=levels)
            q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
            p_sum, q_sum = p.sum(), q.sum()
            if p_sum == 0 or q_sum == 0:
                continue
            p, q = p / p_sum, q / q_sum
            mask = p > 0
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
            if kl < best_kl:
                best_i, best_kl = i, kl
        return best_i

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.hist.counts is not None
        qmin, qmax = self.scheme.qrange
        unsigned = self.signed_min >= 0 and not self.scheme.symmetric
        levels = (qmax - qmin + 1) if unsigned else (qmax - qmin + 1) // 2
        hist = self.hist.counts[0].numpy()
        levels = min(levels, len(hist))
        threshold = self._threshold_bins(hist, levels) * self.hist.width()[0].item()
        lo, hi = max(self.signed_min, -threshold), min(self.signed_max, threshold)
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving-average": MovingAverageMinMaxObserver,
    "histogram": HistogramObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


@dataclass(frozen=True)
class ObserverSpec:
    """An observer configuration (what an `ObserverSlot` records); `make()` builds a fresh observer."""

    kind: str
    scheme: QScheme
    averaging_constant: float = 0.01
    percentile: float = 99.99
    bins: int = 2048

    def __post_init__(self) -> None:
        if self.kind not in OBSERVERS:
            raise ValueError(f"unknown observer {self.kind!r}; valid: {', '.join(OBSERVERS)}")
        if self.scheme.per_channel and not OBSERVERS[self.kind].per_channel_ok:
            raise ValueError(f"observer {self.kind!r} is per-tensor only")
        self.make()  # validates the observer's own options

    def make(self) -> Observer:
        if self.kind == "moving-average":
            return MovingAverageMinMaxObserver(self.scheme, self.averaging_constant)
        if self.kind == "percentile":
            return PercentileObserver(self.scheme, self.percentile, self.bins)
        if self.kind in ("histogram", "mse", "entropy"):
            return OBSERVERS[self.kind](self.scheme, self.bins)  # type: ignore[call-arg]
        return OBSERVERS[self.kind](self.scheme)

    def text(self) -> str:
        kind = self.kind
        if kind == "moving-average":
            kind = f"moving-average({self.averaging_constant:g})"
        elif kind == "percentile":
            kind = f"percentile({self.percentile:g})"
        return f"{kind} {self.scheme.text()}"
