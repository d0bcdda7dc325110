"""examples/cpp: a C++ program runs fxpress artifacts with the TVM runtime alone, bit for bit as fxpress.load does.

Set-up: the module's fixture builds ``fxpress_run`` with ``make`` into a temporary directory, against the TVM
runtime of the installed apache-tvm wheel (skipped, naming the tool, where there is no C++ compiler or
make). Then, for artifacts that exercise every way the artifact format stores weights (fp32 as written,
sub-8-bit int8 ``packed``, k-means ``codebook`` indices, HashedNets buckets stored before the compile-time
transform, which the program runs through the library's ``main_transform_params``) and a model with two
outputs, the program's outputs equal `fxpress.load(...)`'s byte for byte. Bad input, each refused with exit
status 2 and a message saying what to do: a changed byte in weights.safetensors (hash mismatch), a manifest
for another target (host_runnable false), one needing CPU flags this host lacks, a newer format version, an
input of the wrong shape.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BNMLP, SmallCNN
from torch import nn

import fxpress
from fxpress.passes import Calibrate

pytestmark = pytest.mark.tvm

EXAMPLE = Path(__file__).parent.parent / "examples" / "cpp"


@pytest.fixture(scope="module")
def fxpress_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built into a temporary directory (the test's set-up: a fresh build every session)."""
    compiler = os.environ.get("CXX", "g++")
    missing = [tool for tool in (compiler, "make") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"building examples/cpp needs {' and '.join(missing)} (Debian: apt-get install g++ make)")
    build = tmp_path_factory.mktemp("cpp-build")
    done = subprocess.run(
        ["make", "-C", str(EXAMPLE), f"PYTHON={sys.executable}", f"BUILD={build}", f"CXX={compiler}", "-j2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"building examples/cpp failed:\n{done.stdout}\n{done.stderr}"
    return build / "fxpress_run"


class TwoHeads(nn.Module):
    """linear -> relu, then two heads: a model with two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 32)
        self.a = nn.Linear(32, 10)
        self.b = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.a(h), torch.sigmoid(self.b(h))


def _build(kind: str, mlp: nn.Module, cnn: nn.Module) -> tuple[fxpress.Graph, torch.Tensor]:
    """(the optimized graph, an input) for each kind of artifact."""
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    if kind == "fp32":
        return fxpress.optimize(fxpress.capture(mlp, (x,)), "default"), x
    if kind == "kmeans-codebook":
        return fxpress.optimize(fxpress.capture(mlp, (x,)), "default,share-weights{bits=3}"), x
    if kind == "hashed-raw-stage":
        return fxpress.optimize(fxpress.capture(mlp, (x,)), "default,share-weights{method=hash,ratio=0.25}"), x
    if kind == "two-outputs":
        torch.manual_seed(6)
        return fxpress.optimize(fxpress.capture(TwoHeads().eval(), (x,)), "default"), x
    assert kind == "int8-packed"
    image = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    batches = [(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(s)),) for s in range(4)]
    passes = [
        *fxpress.passes.parse_pipeline("fold-bn,observe{per-channel=true,weight-bits=4}"),
        Calibrate(data=batches),
        *fxpress.passes.parse_pipeline("fold-qdq"),
    ]
    return fxpress.optimize(fxpress.capture(cnn, (image,)), passes), image


KINDS = ["fp32", "int8-packed", "kmeans-codebook", "hashed-raw-stage", "two-outputs"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each kind's artifact directory and its input as .npy."""
    torch.manual_seed(3)
    mlp = BNMLP().eval()
    torch.manual_seed(1)
    cnn = SmallCNN().eval()
    root = tmp_path_factory.mktemp("cpp-artifacts")
    out = {}
    for kind in KINDS:
        graph, x = _build(kind, mlp, cnn)
        path = Path(fxpress.compile(graph, "x86", num_threads=1, tuning=False).save(str(root / kind)))
        np.save(root / f"{kind}.npy", x.numpy())
        out[kind] = (path, root / f"{kind}.npy")
    return out


def _run(program: Path, artifact: Path, *inputs: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(program), str(artifact), *map(str, inputs), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / artifact.name))


@pytest.mark.parametrize("kind", KINDS)
def test_cpp_output_equals_python_bit_for_bit(
    kind: str, fxpress_run: Path, artifacts: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    artifact, x = artifacts[kind]
    manifest = json.loads((artifact / "manifest.json").read_text())
    if kind != "fp32" and kind != "two-outputs":  # the artifact really stores its weights that way
        form = {"int8-packed": "packed", "kmeans-codebook": "codebook", "hashed-raw-stage": "hashed"}[kind]
        assert manifest["storage"]["forms"][form] >= 1
    expected = fxpress.load(artifact)(np.load(x))
    done = _run(fxpress_run, artifact, x, out=tmp_path / "out.npy")
    assert done.returncode == 0, done.stderr
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    got = (
        [np.load(tmp_path / "out.npy")]
        if len(expected) == 1
        else [np.load(tmp_path / "out.npy" / f"output{i}.npy") for i in range(len(expected))]
    )
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        assert g.tobytes() == e.tobytes()


def test_a_changed_byte_in_the_weights_is_refused(
    fxpress_run: Path, artifacts: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    artifact, x = artifacts["fp32"]
    tampered = _copy(artifact, tmp_path)
    weights = tampered / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    done = _run(fxpress_run, tampered, x, out=tmp_path / "out.npy")
    assert done.returncode == 2
    assert "weights.safetensors has sha256" in done.stderr and "recompile the artifact" in done.stderr
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"name": "arm", "host_runnable": False}, 'was built for target "arm"; it does not run on this machine'),
        ({"requires": ["avx2", "avx1024"]}, "needs CPU features [avx1024] that this machine lacks"),
        ({"device": "cuda"}, "runs on a cuda device"),
    ],
)
def test_an_artifact_for_another_target_is_refused(
    change: dict[str, object],
    words: str,
    fxpress_run: Path,
    artifacts: dict[str, tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    artifact, x = artifacts["fp32"]
    foreign = _copy(artifact, tmp_path)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["target"].update(change)  # the manifest lists the other files' hashes, not its own
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    done = _run(fxpress_run, foreign, x, out=tmp_path / "out.npy")
    assert done.returncode == 2
    assert words in done.stderr


def test_a_newer_format_and_a_wrong_input_are_refused(
    fxpress_run: Path, artifacts: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    artifact, x = artifacts["fp32"]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 15), np.float32))
    done = _run(fxpress_run, artifact, wrong, out=tmp_path / "out.npy")
    assert done.returncode == 2 and "must have shape [4, 16], got float32[4, 15]" in done.stderr
    np.save(wrong, np.zeros((4, 16), np.float64))
    done = _run(fxpress_run, artifact, wrong, out=tmp_path / "out.npy")
    assert done.returncode == 2 and "must have dtype float32, got float64" in done.stderr
    newer = _copy(artifact, tmp_path)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(manifest))
    done = _run(fxpress_run, newer, x, out=tmp_path / "out.npy")
    assert done.returncode == 2 and "format version 99" in done.stderr
    done = _run(fxpress_run, tmp_path / "nowhere", x, out=tmp_path / "out.npy")
    assert done.returncode == 2 and "not a directory" in done.stderr
