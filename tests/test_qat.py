"""qat: quantization-aware training end to end (digits CNN), sub-8-bit weights, packed artifacts, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fxpress
from fxpress.demo import Digits, load_digits, train
from fxpress.errors import ArtifactError, InputError, PassError
from fxpress.ir import annotations as notes
from fxpress.passes import (
    Calibrate,
    Distil,
    FakeQuantize,
    FoldBatchNorm,
    FoldQDQ,
    FreezeFakeQuant,
    Observe,
    Qat,
    Sparsify,
)
from fxpress.quant.annotations import QuantParams
from fxpress.runtime.packing import narrowest_bits, pack, pack_params, unpack, unpack_params
from fxpress.train.qat import qat


@pytest.fixture(scope="module")
def digits() -> Digits:
    return load_digits()


@pytest.fixture(scope="module")
def float_graph(digits: Digits) -> fxpress.Graph:
    model = train(digits, epochs=6)
    batch = torch.export.Dim("batch")
    return fxpress.capture(model, digits.x_test[:8], dynamic_shapes=({0: batch},))


def _accuracy(graph: fxpress.Graph, data: Digits) -> float:
    return float((graph(data.x_test).argmax(1) == data.y_test).float().mean())


def _calibrated(graph: fxpress.Graph, data: Digits, bits: int) -> fxpress.Graph:
    calib = [(data.x_train[i : i + 64],) for i in range(0, 512, 64)]
    return fxpress.optimize(
        graph, [FoldBatchNorm(), Observe(per_channel=True, weight_bits=bits), Calibrate(data=calib)]
    )


def _batches(data: Digits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(data.x_train[i : i + 32], data.y_train[i : i + 32]) for i in range(0, len(data.x_train), 32)]


@pytest.fixture(scope="module")
def two_bit(float_graph: fxpress.Graph, digits: Digits) -> tuple[fxpress.Graph, fxpress.Graph]:
    """(calibrated with 2-bit weights, the same after two epochs of QAT)."""
    calibrated = _calibrated(float_graph, digits, 2)
    torch.manual_seed(0)
    return calibrated, fxpress.optimize(calibrated, [Qat(data=_batches(digits), epochs=2, lr=1e-3)])


def test_qat_recovers_what_two_bit_weights_lose(two_bit, digits, float_graph):
    calibrated, trained = two_bit
    ptq = _accuracy(fxpress.optimize(calibrated, [FoldQDQ()]), digits)
    int8 = fxpress.optimize(trained, [FoldQDQ()])
    after = _accuracy(int8, digits)
    assert int8.trace[-1].stats["float"] == {}  # every conv and linear runs as an int8 op
    assert after >= _accuracy(float_graph, digits) - 0.02, (ptq, after)
    assert after > ptq + 0.05, (ptq, after)  # post-training ternary weights lose ~20 points (measured)
    assert {"observed", "calibrated", "qat-trained"} <= set(trained.properties)
    stats = trained.trace[-1].stats
    assert stats["epochs"] == 2 and stats["loss_last"] < stats["loss_first"]


def test_qat_weights_keep_their_bit_width_and_learned_scales_moved(two_bit):
    calibrated, trained = two_bit
    before = {n.name: notes.get(n, QuantParams.key) for n in calibrated.nodes()}
    moved = 0
    for node in trained.nodes():
        params = notes.get(node, QuantParams.key)
        if isinstance(params, QuantParams):
            assert params.scheme == before[node.name].scheme  # the bit width travels in the scheme
            moved += not torch.equal(params.scale, before[node.name].scale)
    assert moved > 0
    int8 = fxpress.optimize(trained, [FoldQDQ()])
    for name, value in int8.params().items():
        if name.endswith("weight_i8"):
            assert value.dtype == torch.int8 and int(value.abs().max()) <= 1, name  # ternary


def test_the_given_graph_is_unchanged_and_training_is_deterministic(float_graph, digits):
    calibrated = _calibrated(float_graph, digits, 4)
    text, params = str(calibrated), {k: v.clone() for k, v in calibrated.params().items()}
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(qat(calibrated, _batches(digits)[:10], epochs=1, lr=1e-3, progress=False))
    assert str(calibrated) == text
    assert all(torch.equal(params[k], v) for k, v in calibrated.params().items())
    assert str(runs[0]) == str(runs[1])
    assert all(torch.equal(runs[0].params()[k], v) for k, v in runs[1].params().items())


def test_fixed_parameters_stay_as_calibrated(float_graph, digits):
    calibrated = _calibrated(float_graph, digits, 4)
    trained = qat(calibrated, _batches(digits)[:10], epochs=1, lr=1e-3, learn=False, progress=False)
    for node in trained.nodes():
        params = notes.get(node, QuantParams.key)
        if isinstance(params, QuantParams):
            before = notes.get(next(n for n in calibrated.nodes() if n.name == node.name), QuantParams.key)
            assert params == before, node.name
    assert any(
        not torch.equal(calibrated.params()[k], v) for k, v in trained.params().items() if k in calibrated.params()
    )


def test_qat_keeps_sparsity_masks(float_graph, digits):
    sparse = fxpress.optimize(float_graph, [FoldBatchNorm(), Sparsify(density=0.5)])
    calib = [(digits.x_train[i : i + 64],) for i in range(0, 256, 64)]
    calibrated = fxpress.optimize(sparse, [Observe(per_channel=True), Calibrate(data=calib)])
    zeros = {k: v == 0 for k, v in calibrated.params().items() if k.endswith("weight") and v.dim() > 1}
    trained = qat(calibrated, _batches(digits)[:10], epochs=1, lr=1e-2, progress=False)
    for name, mask in zeros.items():
        assert bool((trained.params()[name][mask] == 0).all()), name


def test_compiled_qat_model_is_bit_identical_to_eager_int8_and_packs_its_weights(two_bit, digits, tmp_path):
    _, trained = two_bit
    int8 = fxpress.optimize(trained, [FoldQDQ()])
    compiled = fxpress.compile(int8, target="x86")
    x = digits.x_test[:64]
    out = np.asarray(compiled(x))
    assert np.array_equal(out, int8(x).numpy())
    path = compiled.save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["format_version"] == 3
    assert manifest["packed"] and {e["bits"] for e in manifest["packed"].values()} == {2}
    loaded = fxpress.load(path)
    assert np.array_equal(np.asarray(loaded(x)), out)
    wide = sum(int(np.prod(e["shape"])) for e in manifest["packed"].values())
    assert (tmp_path / "a" / "weights.safetensors").stat().st_size < wide  # four weights a byte


def test_a_corrupt_packed_table_is_a_clear_error(two_bit, tmp_path):
    _, trained = two_bit
    compiled = fxpress.compile(fxpress.optimize(trained, [FoldQDQ()]), target="x86-64")
    compiled.save(tmp_path / "a")
    manifest_path = tmp_path / "a" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    name = next(iter(manifest["packed"]))
    manifest["packed"][name]["shape"] = [7, 7, 7, 7]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="could not be loaded"):
        fxpress.load(tmp_path / "a")


@pytest.mark.parametrize("bits", [2, 4])
def test_pack_round_trip(bits):
    rng = np.random.default_rng(bits)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for count in (1, 3, 64, 1001):
        a = rng.integers(lo, hi + 1, size=count).astype(np.int8)
        packed = pack(a, bits)
        assert packed.dtype == np.uint8 and packed.size == -(-count * bits // 8)
        assert np.array_equal(unpack(packed, bits, [count]), a)
    assert np.array_equal(pack(np.array([-1, 1], dtype=np.int8), 4), np.array([0x1F], dtype=np.uint8))


def test_packing_picks_the_narrowest_lossless_width():
    assert narrowest_bits(np.zeros(64, np.int8)) == 2
    assert narrowest_bits(np.full(64, -2, np.int8)) == 2 and narrowest_bits(np.full(64, 2, np.int8)) == 4
    assert narrowest_bits(np.full(64, -8, np.int8)) == 4 and narrowest_bits(np.full(64, 8, np.int8)) is None
    assert narrowest_bits(np.zeros(63, np.int8)) is None  # too small to bother
    assert narrowest_bits(np.zeros(64, np.int32)) is None
    arrays = {"w": np.arange(-7, 8, dtype=np.int8).repeat(8), "b": np.arange(100, dtype=np.int32)}
    packed, table = pack_params(arrays)
    assert set(table) == {"w"} and table["w"] == {"bits": 4, "dtype": "int8", "shape": [120]}
    restored = unpack_params(packed, table)
    assert all(np.array_equal(restored[k], arrays[k]) for k in arrays)
    with pytest.raises(ValueError, match="do not fit 2 bits"):
        pack(np.array([2], dtype=np.int8), 2)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(np.zeros(3, np.uint8), 4, [10])


@pytest.mark.parametrize(("bits", "limit"), [(2, 1), (3, 3), (4, 7), (7, 63)])
def test_weight_bits_give_the_symmetric_narrow_range(bits, limit):
    scheme = Observe(per_channel=True, weight_bits=bits).weight_spec(0).scheme
    assert scheme.qrange == (-limit, limit) and scheme.symmetric


@pytest.mark.parametrize("bits", [1, 9, 0])
def test_a_bit_width_outside_two_to_eight_is_refused(bits):
    with pytest.raises(ValueError, match="weight-bits must be an integer from 2 to 8"):
        Observe(weight_bits=bits)
    with pytest.raises(Exception, match="weight-bits must be an integer from 2 to 8"):
        fxpress.passes.parse_pipeline(f"observe{{weight-bits={bits}}}")


def test_weight_bits_and_weight_reduce_range_conflict():
    with pytest.raises(ValueError, match="give one"):
        Observe(weight_bits=4, weight_reduce_range=True)


def test_qat_on_a_graph_without_observers_is_refused(float_graph, digits):
    with pytest.raises(fxpress.errors.PipelineError, match="qat requires"):
        fxpress.optimize(float_graph, [Qat(data=_batches(digits)[:2])])
    with pytest.raises(InputError, match="run observe and calibrate first"):
        qat(float_graph, _batches(digits)[:2], epochs=1, lr=1e-3)


def test_qat_without_data_says_how_to_give_it(float_graph, digits):
    calibrated = _calibrated(float_graph, digits, 8)
    with pytest.raises(PassError, match="qat needs training data"):
        fxpress.optimize(calibrated, "qat{epochs=2}")
    with pytest.raises(ValueError, match="cannot be given as text"):
        Qat(data="batches.pt")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        Qat(epochs=0)


def test_distil_with_a_fake_quantized_student(two_bit, float_graph, digits):
    """fp32 teacher, 2-bit fake-quantized student: fake-quantize, distil, freeze-fake-quant, fold-qdq."""
    calibrated, _ = two_bit
    pipeline = [
        FakeQuantize(),
        Distil(teacher=float_graph, data=_batches(digits), epochs=1, lr=1e-3, temperature=4.0, alpha=0.5),
        FreezeFakeQuant(),
        FoldQDQ(),
    ]
    int8 = fxpress.optimize(calibrated, pipeline)
    assert [r.pipeline.split("{")[0] for r in int8.trace[-4:]] == [
        "fake-quantize",
        "distil",
        "freeze-fake-quant",
        "fold-qdq",
    ]
    assert int8.trace[-1].stats["float"] == {}
    ptq = _accuracy(fxpress.optimize(calibrated, [FoldQDQ()]), digits)
    assert _accuracy(int8, digits) > ptq + 0.05
    # without freeze-fake-quant the trained parameters stay in the fake-quantize ops (and distil moved the weights)
    with pytest.raises(fxpress.errors.PipelineError, match=r"fold-qdq cannot run .*run freeze-fake-quant before it"):
        fxpress.optimize(calibrated, [FakeQuantize(), pipeline[1], FoldQDQ()])


def test_learned_scales_step_relative_to_their_size(float_graph, digits):
    """Adam steps ~lr whatever a tensor's size: each scale gets qparams_lr * scale, each zero point
    qparams_lr * (qmax - qmin); the weights keep lr; quantization parameters get no weight decay."""
    from fxpress.quant.qat_graph import insert_fake_quant
    from fxpress.train.qat import _relative_steps

    prepared = _calibrated(float_graph, digits, 4).copy()
    insert_fake_quant(prepared, learn=True)
    params = [p for p in prepared.gm.parameters() if p.is_floating_point()]
    opt = _relative_steps(prepared, "adamw", 1e-4, 1e-2, 0.1)(params)
    weights, *singles = opt.param_groups
    assert weights["lr"] == 1e-4 and weights["weight_decay"] == 0.1
    by_name = {id(p): n for n, p in prepared.gm.named_parameters()}
    for group in singles:
        (p,) = group["params"]
        name = by_name[id(p)]
        assert group["weight_decay"] == 0.0
        if name.endswith("_scale"):
            assert group["lr"] == pytest.approx(1e-2 * float(p.abs().mean())), name
        else:
            assert name.endswith("_zero_point") and group["lr"] == pytest.approx(1e-2 * 255), name
    assert len(singles) == sum(1 for n, _ in prepared.gm.named_parameters() if "_fq_" in n)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)


def test_qparams_lr_must_be_positive():
    with pytest.raises(ValueError, match="qparams-lr must be > 0"):
        Qat(qparams_lr=0.0)


def test_seed_repeats_a_run_and_each_epoch_is_logged(float_graph, digits, caplog):
    calibrated = _calibrated(float_graph, digits, 4)
    data = _batches(digits)[:6]
    with caplog.at_level("INFO", logger="fxpress.train.qat"):
        runs = [qat(calibrated, data, epochs=2, lr=1e-3, seed=5, progress=False) for _ in range(2)]
    assert all(torch.equal(runs[0].params()[k], v) for k, v in runs[1].params().items())
    assert [r.message.split(",")[0] for r in caplog.records][:2] == ["qat: epoch 1/2", "qat: epoch 2/2"]
    with pytest.raises(PassError, match="seed must be an integer"):
        qat(calibrated, data, epochs=1, lr=1e-3, seed="5")  # type: ignore[arg-type]
    with pytest.raises(PassError, match="qat: lr must be"):
        qat(calibrated, data, epochs=1, lr=0.0)
