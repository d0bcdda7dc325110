"""Calibration data from files and factories: layouts, the batches calibrate gets, and each bad input."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import InputError
from fxpress.ir.annotations import get
from fxpress.passes import Calibrate, Observe
from fxpress.quant.calib_data import load_calibration


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * mask


def _arrays(n: int, shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


@pytest.fixture
def one_input() -> fxpress.Graph:
    return fxpress.capture(nn.Sequential(nn.Linear(6, 4)).eval(), (torch.zeros(3, 6),))


@pytest.fixture
def two_inputs() -> fxpress.Graph:
    return fxpress.capture(TwoInputs().eval(), (torch.zeros(3, 6), torch.zeros(3, 4)))


def test_npy_directory_one_file_per_batch_in_sorted_order(one_input, tmp_path) -> None:
    arrays = _arrays(3, (3, 6))
    for name, a in zip(["b02.npy", "b00.npy", "b01.npy"], [arrays[2], arrays[0], arrays[1]], strict=True):
        np.save(tmp_path / name, a)
    (tmp_path / "README.txt").write_text("ignored")
    batches = load_calibration(str(tmp_path), one_input)
    assert len(batches) == 3 and all(len(b) == 1 for b in batches)
    for batch, a in zip(batches, arrays, strict=True):
        np.testing.assert_array_equal(batch[0].numpy(), a)
    assert len(load_calibration(str(tmp_path / "b01.npy"), one_input)) == 1  # one file: one batch


def test_npy_directory_one_input_per_file(two_inputs, tmp_path) -> None:
    xs, masks = _arrays(2, (3, 6)), _arrays(2, (3, 4), seed=1)
    for i in range(2):
        np.save(tmp_path / f"{i}_0.npy", xs[i])
        np.save(tmp_path / f"{i}_1.npy", masks[i])
    batches = load_calibration(str(tmp_path), two_inputs)
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1][0].numpy(), xs[1])
    np.testing.assert_array_equal(batches[1][1].numpy(), masks[1])


@pytest.mark.parametrize("keys", ["names", "arg", "positional"])
def test_npz_one_file_per_batch(two_inputs, tmp_path, keys) -> None:
    xs, masks = _arrays(2, (3, 6)), _arrays(2, (3, 4), seed=1)
    for i in range(2):
        path = tmp_path / f"batch{i}.npz"
        if keys == "names":
            np.savez(path, mask=masks[i], x=xs[i])  # key order differs from the inputs' order
        elif keys == "arg":
            np.savez(path, arg1=masks[i], arg0=xs[i])
        else:
            np.savez(path, xs[i], masks[i])
    batches = load_calibration(str(tmp_path), two_inputs)
    for i in range(2):
        np.testing.assert_array_equal(batches[i][0].numpy(), xs[i])
        np.testing.assert_array_equal(batches[i][1].numpy(), masks[i])


def test_factory_from_a_file_and_calibrate_gets_the_same_parameters(one_input, tmp_path) -> None:
    source = textwrap.dedent(
        """
        import numpy as np
        import torch

        def batches():
            rng = np.random.default_rng(7)
            for i in range(4):
                a = rng.standard_normal((3, 6)).astype(np.float32)
                yield (torch.from_numpy(a),) if i % 2 else a   # tuples of tensors, or bare arrays
        """
    )
    (tmp_path / "calib.py").write_text(source)
    batches = load_calibration(f"{tmp_path / 'calib.py'}:batches", one_input)
    rng = np.random.default_rng(7)
    expected = [torch.from_numpy(rng.standard_normal((3, 6)).astype(np.float32)) for _ in range(4)]
    assert len(batches) == 4
    for batch, e in zip(batches, expected, strict=True):
        assert torch.equal(batch[0], e)
    # the loaded batches calibrate exactly as the same tensors given in Python
    ours = fxpress.optimize(one_input, [Observe(), Calibrate(data=batches)])
    ref = fxpress.optimize(one_input, [Observe(), Calibrate(data=[(e,) for e in expected])])
    x = ours.inputs[0]
    assert get(x, "qparams") == get(ref.inputs[0], "qparams") and get(x, "qparams") is not None
    lo = min(float(e.min()) for e in expected)
    hi = max(float(e.max()) for e in expected)
    assert float(get(x, "qparams").scale) == pytest.approx((hi - lo) / 255, rel=1e-6)


def test_factory_from_a_module(one_input, tmp_path, monkeypatch) -> None:
    (tmp_path / "my_calib_mod.py").write_text(
        "import torch\ndef data():\n    return [(torch.ones(3, 6),), (torch.zeros(3, 6),)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    batches = load_calibration("my_calib_mod:data", one_input)
    assert [float(b[0].sum()) for b in batches] == [18.0, 0.0]


def _raises(spec: str, graph: fxpress.Graph, *needles: str) -> None:
    with pytest.raises(InputError) as info:
        load_calibration(spec, graph)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_bad_paths(one_input, tmp_path) -> None:
    _raises(str(tmp_path / "nowhere"), one_input, "no such file or directory", "MODULE:FUNCTION")
    _raises(str(tmp_path), one_input, "holds no .npy or .npz files")
    (tmp_path / "notes.txt").write_text("x")
    _raises(str(tmp_path / "notes.txt"), one_input, "not a .npy or .npz file")
    (tmp_path / "broken.npy").write_text("not numpy")
    _raises(str(tmp_path / "broken.npy"), one_input, "broken.npy", "cannot read it")


def test_bad_files_are_named(one_input, two_inputs, tmp_path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 7), np.float32))
    _raises(str(tmp_path), one_input, "a.npy", f"input {one_input.input_names[0]!r}", "[3, 7]", "[3, 6]")
    np.save(tmp_path / "a.npy", np.zeros((3, 6), np.float64))
    _raises(str(tmp_path), one_input, "a.npy", "torch.float64", "torch.float32")
    _raises(str(tmp_path / "a.npy"), two_inputs, "1 .npy files do not make whole batches of 2 inputs")
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 6), np.float32))
    _raises(str(tmp_path), one_input, "mixes .npy and .npz")
    (tmp_path / "a.npy").unlink()
    _raises(str(tmp_path), two_inputs, "b.npz", "keys ['x']", "['x', 'mask']", "np.savez(file, x=..., mask=...)")


def test_bad_factories(one_input, tmp_path) -> None:
    (tmp_path / "f.py").write_text(
        "import torch\n"
        "def empty():\n    return []\n"
        "def number():\n    return 3\n"
        "def labels():\n    return [(torch.zeros(3, 6), torch.zeros(3))]\n"
        "constant = 1\n"
    )
    f = tmp_path / "f.py"
    _raises(f"{f}:missing", one_input, "has no callable 'missing'")
    _raises(f"{f}:constant", one_input, "has no callable 'constant'")
    _raises(f"{tmp_path / 'g.py'}:data", one_input, "g.py does not exist")
    _raises("no_such_module_xyz:data", one_input, "cannot be imported")
    _raises(f"{f}:empty", one_input, "gave no batches")
    _raises(f"{f}:number", one_input, "returned a int, not an iterable")
    _raises(f"{f}:labels", one_input, "(batch 0)", "has 2 tensors but the graph takes 1 inputs")
