"""fxpress.quant: schemes and observers, checked against torch.ao's observers and against the data itself."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from sklearn.datasets import load_digits
from torch.ao.quantization import observer as tq

from fxpress.quant import QScheme, QuantParams, compute_qparams, fake_quantize
from fxpress.quant.observers import (
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    ObserverSpec,
    PercentileObserver,
)


def _outliers() -> list[torch.Tensor]:
    """Gaussian batches of growing spread, some with a few large outliers (the range grows batch by batch)."""
    g = torch.Generator().manual_seed(10)
    batches = []
    for i in range(6):
        x = torch.randn(32, 128, generator=g) * (1 + 0.3 * i) + 0.2
        if i in (1, 4):
            x.view(-1)[torch.randint(0, x.numel(), (5,), generator=g)] = torch.tensor([25.0, -18.0, 40.0, 31.0, -22.0])
        batches.append(x)
    return batches


def _relu() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.relu(torch.randn(32, 128, generator=g) * (1 + 0.5 * i) + 0.3) for i in range(5)]


def _digits() -> list[torch.Tensor]:
    """The 1797 8x8 sklearn digits (pixel values 0..16, many constant-zero pixels), 6 batches of [N, 64]."""
    images = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    return list(images.split(300))


def _heavy_tail() -> list[torch.Tensor]:
    """Student-t (3 degrees of freedom); with this seed torch.ao's L2 search trims the tail by 2.4 %."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        return [torch.distributions.StudentT(3.0).sample((32, 128)) for _ in range(6)]


DATA = {"outliers": _outliers, "relu": _relu, "digits": _digits, "heavy-tail": _heavy_tail}
CONFIGS = {  # name -> (dtype, symmetric, reduce_range, torch dtype)
    "int8-affine": ("int8", False, False, torch.qint8),
    "int8-sym": ("int8", True, False, torch.qint8),
    "uint8-affine": ("uint8", False, False, torch.quint8),
    "uint8-sym": ("uint8", True, False, torch.quint8),
    "int8-affine-reduced": ("int8", False, True, torch.qint8),
    "uint8-affine-reduced": ("uint8", False, True, torch.quint8),
}


def _torch(cls, config: str, per_channel: bool = False, **kwargs):
    _, symmetric, reduce_range, tdtype = CONFIGS[config]
    if per_channel:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    else:
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reduce_range is deprecated in torch.ao
        return cls(dtype=tdtype, qscheme=qscheme, reduce_range=reduce_range, **kwargs)


def _scheme(config: str, axis: int | None = None) -> QScheme:
    dtype, symmetric, reduce_range, _ = CONFIGS[config]
    return QScheme(dtype, symmetric, axis, reduce_range=reduce_range)


def _assert_same(mine: QuantParams, theirs: tuple[torch.Tensor, torch.Tensor]) -> None:
    scale, zero_point = theirs
    torch.testing.assert_close(mine.scale, scale.reshape(-1).float(), rtol=1e-6, atol=0)
    assert torch.equal(mine.zero_point, zero_point.reshape(-1).long())


def _feed(observers, batches):
    for x in batches:
        for o in observers:
            o(x) if isinstance(o, torch.nn.Module) else o.observe(x)


# -- torch.ao compatibility --------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("data", list(DATA))
def test_minmax_matches_torch(data, config):
    batches = DATA[data]()
    mine, theirs = MinMaxObserver(_scheme(config)), _torch(tq.MinMaxObserver, config)
    _feed([mine, theirs], batches)
    _assert_same(mine.qparams(), theirs.calculate_qparams())


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("data", list(DATA))
def test_per_channel_minmax_matches_torch(data, config, axis):
    batches = DATA[data]()
    if axis == 0:  # channels along dim 0: give every batch the same row count
        batches = [b[:32] for b in batches]
    mine = MinMaxObserver(_scheme(config, axis))
    theirs = _torch(tq.PerChannelMinMaxObserver, config, per_channel=True, ch_axis=axis)
    _feed([mine, theirs], batches)
    qp = mine.qparams()
    assert qp.scale.shape == (batches[0].shape[axis],)
    _assert_same(qp, theirs.calculate_qparams())


@pytest.mark.parametrize("config", ["int8-affine", "uint8-sym"])
@pytest.mark.parametrize("data", list(DATA))
def test_moving_average_matches_torch(data, config):
    batches = DATA[data]()
    mine = MovingAverageMinMaxObserver(_scheme(config), averaging_constant=0.3)
    theirs = _torch(tq.MovingAverageMinMaxObserver, config, averaging_constant=0.3)
    mine_ch = MovingAverageMinMaxObserver(_scheme(config, 1), averaging_constant=0.3)
    theirs_ch = _torch(
        tq.MovingAveragePerChannelMinMaxObserver, config, per_channel=True, ch_axis=1, averaging_constant=0.3
    )
    _feed([mine, theirs, mine_ch, theirs_ch], batches)
    _assert_same(mine.qparams(), theirs.calculate_qparams())
    _assert_same(mine_ch.qparams(), theirs_ch.calculate_qparams())
    if data == "outliers":
        full = MinMaxObserver(_scheme(config))
        _feed([full], batches)
        assert mine.qparams().scale < full.qparams().scale  # the average forgets the outlier batches


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("data", list(DATA))
def test_histogram_matches_torch(data, config):
    batches = DATA[data]()
    mine, theirs = HistogramObserver(_scheme(config)), _torch(tq.HistogramObserver, config)
    _feed([mine, theirs], batches)
    torch.testing.assert_close(mine.histogram, theirs.histogram, rtol=0, atol=0)
    for start, end in ((0, 2047), (3, 2000), (700, 1500), (1024, 1030)):  # the L2 error of a candidate range
        assert mine._error(start, end) == theirs._compute_quantization_error(start, end)
    (lo, hi), (their_lo, their_hi) = mine.range(), theirs._non_linear_param_search()
    assert torch.equal(lo, their_lo) and torch.equal(hi, their_hi)
    qp = mine.qparams()
    _assert_same(qp, theirs.calculate_qparams())
    if data == "heavy-tail":  # the search really trims here: a narrower range than min-max
        values = torch.cat(batches)
        assert hi - lo < 0.99 * (values.max() - values.min())


def test_histogram_of_one_value_then_more():
    """A first batch of one repeated value makes a spike that later batches re-bin (torch's special case)."""
    batches = [torch.full((10,), 0.5), torch.randn(1000, generator=torch.Generator().manual_seed(3))]
    mine, theirs = HistogramObserver(QScheme("uint8")), tq.HistogramObserver()
    _feed([mine, theirs], batches)
    _assert_same(mine.qparams(), theirs.calculate_qparams())


# -- schemes -------------------------------------------------------------------------


def test_power_of_two_scales():
    batches = _outliers()
    for symmetric in (False, True):
        linear, pow2 = QScheme("int8", symmetric), QScheme("int8", symmetric, power_of_two=True)
        lo, hi = torch.cat([b.reshape(-1) for b in batches]).aminmax()
        s_lin, _ = compute_qparams(lo, hi, linear)
        s_pow, zp = compute_qparams(lo, hi, pow2)
        exponent = torch.log2(s_pow)
        assert torch.equal(exponent, exponent.round())  # exactly a power of two
        assert s_lin <= s_pow < 2 * s_lin  # rounded up: at most one bit of resolution lost
        qp = QuantParams(pow2, s_pow, zp)
        x = torch.cat(batches).reshape(-1)
        assert (qp.fake_quantize(x) - x).abs().max() <= s_pow / 2 + 1e-6  # still no clipping


def test_power_of_two_rounds_up_only_when_needed():
    scheme = QScheme("int8", True, power_of_two=True)
    exact, _ = compute_qparams(torch.tensor(-63.75), torch.tensor(63.75), scheme)  # 63.75 / 127.5 = 0.5
    above, _ = compute_qparams(torch.tensor(-63.8), torch.tensor(63.8), scheme)
    below, _ = compute_qparams(torch.tensor(-63.7), torch.tensor(63.7), scheme)
    assert (exact.item(), above.item(), below.item()) == (0.5, 1.0, 0.5)


def test_fake_quantize_matches_torch_on_exact_scales():
    """With power-of-two scales x / s == x * (1/s), so torch's kernels and ours must agree bit for bit."""
    x = torch.cat(_outliers()).reshape(8, -1)
    per_tensor = QScheme("uint8", power_of_two=True)
    s, zp = compute_qparams(*x.aminmax(), per_tensor)
    ours = fake_quantize(x, s, zp, per_tensor)
    theirs = torch.fake_quantize_per_tensor_affine(x, s.item(), int(zp), 0, 255)
    assert torch.equal(ours, theirs)
    per_channel = QScheme("int8", True, 0, power_of_two=True)
    s, zp = compute_qparams(*x.aminmax(dim=1), per_channel)
    ours = fake_quantize(x, s, zp, per_channel)
    theirs = torch.fake_quantize_per_channel_affine(x, s, zp.int(), 0, -128, 127)
    assert torch.equal(ours, theirs)


def test_quantize_round_trip():
    x = torch.randn(4, 16)
    scheme = QScheme("int8", False, 0)
    qp = QuantParams.from_range(*x.aminmax(dim=1), scheme)
    q = qp.quantize(x)
    assert q.dtype == torch.int8
    err = (qp.dequantize(q) - x).abs()
    assert bool((err <= qp.scale.unsqueeze(1) / 2 + 1e-6).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dtype": "int4"}, "dtype"),
        ({"dtype": "uint8", "symmetric": True, "reduce_range": True}, "outside"),
        ({"quant_min": -10}, "both"),
        ({"quant_min": 1, "quant_max": 10}, "contain 0"),
        ({"dtype": "int8", "quant_min": -200, "quant_max": 10}, "within"),
        ({"axis": -1}, "axis"),
    ],
)
def test_bad_schemes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QScheme(**kwargs)


def test_custom_range_matches_torch():
    x = torch.cat(_relu())
    for symmetric, reduce_range in ((False, False), (True, False), (False, True)):
        scheme = QScheme("uint8", symmetric, quant_min=0, quant_max=100, reduce_range=reduce_range)
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = tq.MinMaxObserver(
                dtype=torch.quint8, qscheme=qscheme, quant_min=0, quant_max=100, reduce_range=reduce_range
            )
        mine = MinMaxObserver(scheme)
        _feed([mine, theirs], [x])
        _assert_same(mine.qparams(), theirs.calculate_qparams())


# -- the other observers, against the data ---------------------------------------------


def _cdf(values: torch.Tensor, at: float) -> float:
    return float((values <= at).double().mean())


def test_percentile_is_the_data_percentile():
    """The chosen bounds hold 0.1 % of the values outside each, to within one bin (three once re-binned)."""
    g = torch.Generator().manual_seed(12)
    batches = [torch.randn(20000, generator=g) * (1 + i) for i in range(3)]
    values = torch.cat(batches)
    one, grown = PercentileObserver(QScheme("int8"), 99.9), PercentileObserver(QScheme("int8"), 99.9)
    one.observe(values)
    _feed([grown], batches)  # the range grows twice: old bins are re-binned
    width = (values.max() - values.min()).item() / 2048
    for obs, bins in ((one, 1), (grown, 3)):
        lo, hi = (t.item() for t in obs.range())
        assert _cdf(values, hi - bins * width) <= 0.999 <= _cdf(values, hi + bins * width)
        assert _cdf(values, lo - bins * width) <= 0.001 <= _cdf(values, lo + bins * width)


def test_percentile_per_channel():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(4, 50000, generator=g) * torch.tensor([[0.1], [1.0], [5.0], [20.0]])
    obs = PercentileObserver(QScheme("int8", True, 0), percentile=99.0)
    obs.observe(x)
    lo, hi = obs.range()
    assert lo.shape == hi.shape == (4,)
    width = (x.amax(1) - x.amin(1)) / 2048
    for c in range(4):
        assert _cdf(x[c], hi[c] - width[c]) <= 0.99 <= _cdf(x[c], hi[c] + width[c])
        assert _cdf(x[c], lo[c] - width[c]) <= 0.01 <= _cdf(x[c], lo[c] + width[c])


def _exact_mse(x: torch.Tensor, qp: QuantParams) -> float:
    return float(((qp.fake_quantize(x.double()) - x.double()) ** 2).mean())


@pytest.mark.parametrize("data", ["outliers", "relu"])
def test_mse_minimizes_the_real_error(data):
    batches = DATA[data]()
    values = torch.cat([b.reshape(-1) for b in batches])
    scheme = QScheme("int8")
    mse, minmax = MSEObserver(scheme), MinMaxObserver(scheme)
    _feed([mse, minmax], batches)
    chosen = _exact_mse(values, mse.qparams())
    assert chosen < _exact_mse(values, minmax.qparams())
    lo, hi = values.min().clamp(max=0), values.max().clamp(min=0)  # brute force on the data itself
    best = min(_exact_mse(values, QuantParams.from_range(lo * k / 100, hi * k / 100, scheme)) for k in range(1, 101))
    assert chosen <= best * 1.02  # the histogram search is within 2% of the exact optimum


def test_mse_per_channel_weights():
    """With 4 bits, the MSE-optimal clip of a Laplace weight lies well inside its range (ACIQ: ~5 b)."""
    with torch.random.fork_rng():
        torch.manual_seed(14)
        w = torch.distributions.Laplace(0.0, 1.0).sample((3, 4096)) * torch.tensor([[0.1], [1.0], [3.0]])
    scheme = QScheme("int8", True, 0, quant_min=-8, quant_max=7)
    mse, minmax = MSEObserver(scheme), MinMaxObserver(scheme)
    _feed([mse, minmax], [w])
    a, b = mse.qparams(), minmax.qparams()
    assert a.scale.shape == (3,)
    for c in range(3):
        assert _exact_mse(w[c], _channel(a, c)) < 0.8 * _exact_mse(w[c], _channel(b, c))
    assert bool((a.scale < 0.8 * b.scale).all())


def _channel(qp: QuantParams, c: int) -> QuantParams:
    per_tensor = dataclasses.replace(qp.scheme, axis=None)
    return QuantParams(per_tensor, qp.scale[c : c + 1], qp.zero_point[c : c + 1])


def test_entropy_keeps_a_uniform_range_and_clips_a_heavy_tail():
    g = torch.Generator().manual_seed(15)
    uniform = torch.rand(200000, generator=g) * 2 - 1
    obs = EntropyObserver(QScheme("int8", True))
    obs.observe(uniform)
    assert obs.range()[1].item() > 0.97  # no tail to cut: clipping would only add error
    heavy = torch.distributions.StudentT(2.0).sample((200000,))
    obs = EntropyObserver(QScheme("int8", True))
    obs.observe(heavy)
    hi = obs.range()[1]
    assert hi.item() < 0.5 * heavy.abs().max().item()
    assert float((heavy.abs() > hi).float().mean()) < 0.01  # clips the tail, not the body


def test_entropy_gives_non_negative_data_all_levels():
    x = torch.cat(_relu())
    affine, sym = EntropyObserver(QScheme("uint8")), EntropyObserver(QScheme("uint8", True))
    _feed([affine, sym], [x])
    assert affine.range()[0].item() == 0.0
    assert affine.qparams().zero_point.item() == 0
    assert sym.qparams().zero_point.item() == 128


@pytest.mark.parametrize("kind", ["histogram", "entropy"])
def test_per_tensor_only_observers_refuse_channels(kind):
    with pytest.raises(ValueError, match="per-tensor only"):
        ObserverSpec(kind, QScheme("int8", axis=0))


def test_observer_without_data():
    for kind in ("minmax", "moving-average", "histogram", "percentile", "mse", "entropy"):
        obs = ObserverSpec(kind, QScheme()).make()
        obs.observe(torch.empty(0))
        with pytest.raises(ValueError, match="observed no values"):
            obs.qparams()


def test_spec_validation():
    with pytest.raises(ValueError, match="unknown observer"):
        ObserverSpec("max", QScheme())
    with pytest.raises(ValueError, match="averaging"):
        ObserverSpec("moving-average", QScheme(), averaging_constant=0.0)
    with pytest.raises(ValueError, match="percentile"):
        ObserverSpec("percentile", QScheme(), percentile=40.0)
    assert ObserverSpec("percentile", QScheme("uint8", True), percentile=99.9).text() == "percentile(99.9) u8 sym"


def _mse_range_over_all_bins(obs: MSEObserver) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: `MSEObserver._range` as it was before it read only occupied bins (every bin, empty ones too)."""
    counts, centers = obs.hist.counts, obs.hist.centers()
    assert counts is not None
    lo, hi = obs.hist.lo.clamp(max=0), obs.hist.hi.clamp(min=0)
    best = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    rows = dataclasses.replace(obs.scheme, axis=0)
    for k in range(obs.grid, 0, -1):
        cand_lo, cand_hi = (lo * (k / obs.grid)).float(), (hi * (k / obs.grid)).float()
        scale, zp = compute_qparams(cand_lo, cand_hi, rows)
        rounded = fake_quantize(centers, scale, zp, rows)
        err = (counts * (centers - rounded) ** 2).sum(1)
        better = err < best
        best = torch.where(better, err, best)
        best_lo = torch.where(better, cand_lo.double(), best_lo)
        best_hi = torch.where(better, cand_hi.double(), best_hi)
    return obs._shape(best_lo), obs._shape(best_hi)


@pytest.mark.parametrize(
    ("shape", "scheme"),
    [
        ((64, 64, 1, 1), QScheme("int8", True, 0)),  # the slow case: 64 values a channel, 2048 bins
        ((64, 64, 1, 1), QScheme.log(3, 0)),
        ((16, 6, 5, 5), QScheme.log(4, 0)),
        ((6, 1, 5, 5), QScheme("int8", True, 0, False, False, -7, 7)),  # 4-bit narrow range
        ((32, 3000), QScheme("int8", True, 0)),  # more values than bins: every bin can be occupied
        ((10, 20), QScheme.log(2, None)),  # per tensor
        ((12, 8), QScheme("uint8", False, 0)),  # affine
    ],
)
def test_mse_search_over_occupied_bins_equals_the_search_over_all(shape, scheme):
    """Empty bins add exactly 0 to each candidate's error: reading only occupied ones gives the same range."""
    torch.manual_seed(sum(shape))
    weight = torch.distributions.Laplace(0.0, 0.05).sample(shape)
    weight[0].view(-1)[0] = 0.9  # an outlier a search clips
    obs = MSEObserver(scheme)
    obs.observe(weight)
    want, got = _mse_range_over_all_bins(obs), obs._range()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert obs._occupied()[0].shape[1] <= min(weight[0].numel() if scheme.axis == 0 else weight.numel(), 2048)
