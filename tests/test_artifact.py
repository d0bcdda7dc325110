"""TVM compile, the artifact on disk, loading it without torch, and bad inputs."""

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

import fxpress
from fxpress.errors import ArtifactError, BackendError, InputError, TargetError
from fxpress.runtime import CompiledModule
from fxpress.runtime.artifact import sha256

pytestmark = pytest.mark.tvm

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cnn_model() -> SmallCNN:
    torch.manual_seed(11)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(12))


@pytest.fixture(scope="module")
def graph(cnn_model, x) -> fxpress.Graph:
    return fxpress.optimize(fxpress.capture(cnn_model, (x,)), "default")


@pytest.fixture(scope="module")
def compiled(graph) -> CompiledModule:
    return fxpress.compile(graph, target="x86")


@pytest.fixture(scope="module")
def artifact(compiled, tmp_path_factory) -> Path:
    return Path(compiled.save(str(tmp_path_factory.mktemp("artifact") / "cnn")))


def _copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "copy"))


# -- compile and run -----------------------------------------------------------


def test_compiled_matches_eager(compiled, cnn_model, x):
    expected = cnn_model(x).detach()
    out = compiled(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)  # torch in, torch out
    assert (out - expected).abs().max() <= 1e-4
    other = torch.randn(2, 3, 8, 8) * 5
    assert (compiled(other) - cnn_model(other)).abs().max() <= 1e-4
    out_np = compiled(x.numpy())
    assert isinstance(out_np, np.ndarray)  # numpy in, numpy out
    np.testing.assert_allclose(out_np, expected.numpy(), rtol=0, atol=1e-4)


def test_manifest_records_signature_pipeline_and_hashes(artifact, graph):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["format"] == "fxpress-artifact" and manifest["format_version"] == 3
    assert manifest["inputs"] == [{"name": "x", "shape": [2, 3, 8, 8], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "output0", "shape": [2, 4], "dtype": "float32"}]
    assert manifest["single_output"] is True
    assert manifest["target"]["name"] == "x86" and manifest["target"]["host_runnable"] is True
    assert manifest["pipeline"] == "fold-bn,fold-constants,dce" == graph.pipeline
    assert [r["pass"] for r in manifest["trace"]] == ["fold-bn", "fold-constants", "dce"]
    assert manifest["model"] == "SmallCNN"
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "model.so", "weights.safetensors"]
    assert manifest["files"] == {n: sha256(artifact / n) for n in ("model.so", "weights.safetensors")}


def test_save_load_roundtrip(artifact, compiled, x):
    loaded = fxpress.load(artifact)
    assert loaded.inputs == compiled.inputs and loaded.target == "x86"
    np.testing.assert_allclose(loaded(x.numpy()), compiled(x.numpy()), rtol=0, atol=1e-6)
    torch.testing.assert_close(loaded(x), compiled(x), rtol=0, atol=1e-6)


def test_loaded_module_saves_again(artifact, cnn_model, x, tmp_path):
    loaded = fxpress.load(str(artifact))
    again = Path(loaded.save(str(tmp_path / "again")))
    assert sha256(again / "model.so") == sha256(artifact / "model.so")
    assert sha256(again / "weights.safetensors") == sha256(artifact / "weights.safetensors")
    np.testing.assert_allclose(fxpress.load(again)(x.numpy()), cnn_model(x).detach().numpy(), rtol=0, atol=1e-4)


CHILD = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError, wherever it is tried
import numpy as np
import fxpress

module = fxpress.load(sys.argv[1])
np.save(sys.argv[3], module(np.load(sys.argv[2])))
assert sys.modules["torch"] is None
compiler = sorted(m for m in sys.modules if m.startswith(("fxpress.ir", "fxpress.passes", "fxpress.backends")))
assert not compiler, compiler
print("ran without torch")
"""


def test_runs_in_a_process_without_torch(artifact, cnn_model, x, tmp_path):
    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(artifact), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ran without torch" in proc.stdout
    out = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(out, cnn_model(x).detach().numpy(), rtol=0, atol=1e-4)


def test_eager_target(graph, cnn_model, x):
    eager = fxpress.compile(graph, target="eager")
    torch.testing.assert_close(eager(x), cnn_model(x), rtol=0, atol=1e-5)
    np.testing.assert_allclose(eager(x.numpy()), cnn_model(x).detach().numpy(), rtol=0, atol=1e-5)
    with pytest.raises(InputError, match=r"expected 1 input\(s\) \(x\), got 2"):
        eager(x, x)


# -- bad inputs ----------------------------------------------------------------


@pytest.mark.parametrize("which", ["compiled", "loaded"])
def test_wrong_inputs_name_the_input(which, compiled, artifact, x):
    module = compiled if which == "compiled" else fxpress.load(artifact)
    a = x.numpy()
    cases = [
        ((), r"expected 1 input\(s\) \(x\), got 0"),
        ((a, a), r"expected 1 input\(s\) \(x\), got 2"),
        ((a.astype(np.float64),), r"input 'x' must have dtype float32, got float64"),
        ((x.to(torch.float16),), r"input 'x' must have dtype float32, got float16"),
        ((a[:1],), r"input 'x' must have shape \[2, 3, 8, 8\], got \[1, 3, 8, 8\]"),
        ((a.reshape(2, 3, 64),), r"input 'x' must have shape \[2, 3, 8, 8\], got \[2, 3, 64\]"),
        ((a.tolist(),), r"input 'x' must be a numpy array or torch tensor, got list"),
    ]
    for args, message in cases:
        with pytest.raises(InputError, match=message):
            module(*args)


# -- tampering and missing files ----------------------------------------------


@pytest.mark.parametrize("name", ["weights.safetensors", "model.so"])
def test_tampered_file_is_refused(artifact, tmp_path, name):
    copy = _copy(artifact, tmp_path)
    data = bytearray((copy / name).read_bytes())
    data[-9] ^= 0x01  # one bit, inside the data
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{name} has sha256 [0-9a-f]+\.\.\., the manifest says .* changed"):
        fxpress.load(copy)


def test_missing_manifest(artifact, tmp_path):
    copy = _copy(artifact, tmp_path)
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json is missing"):
        fxpress.load(copy)


def test_missing_weights(artifact, tmp_path):
    copy = _copy(artifact, tmp_path)
    (copy / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"incomplete: weights\.safetensors is missing"):
        fxpress.load(copy)


def test_corrupt_or_newer_manifest(artifact, tmp_path):
    copy = _copy(artifact, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match=r"format version 99; this fxpress reads versions \[1, 2, 3\]"):
        fxpress.load(copy)
    (copy / "manifest.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        fxpress.load(copy)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not a directory"):
        fxpress.load(tmp_path / "nothing-here")


# -- atomic save ---------------------------------------------------------------


def _scaled(module: CompiledModule, factor: float) -> CompiledModule:
    """The same executable with every parameter scaled: another model, no compile."""
    import tvm

    params = [tvm.runtime.tensor(p.numpy() * factor) for p in module.params]
    return CompiledModule(module.executable, params, module.manifest)


def test_saving_over_an_artifact_replaces_it(compiled, x, tmp_path):
    dest = tmp_path / "art"
    compiled.save(str(dest))
    other = _scaled(compiled, 2.0)
    expected = other(x.numpy())
    assert np.abs(expected - compiled(x.numpy())).max() > 1e-2
    other.save(str(dest))
    np.testing.assert_allclose(fxpress.load(dest)(x.numpy()), expected, rtol=0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temp or old directories left


def test_failing_write_leaves_the_old_artifact(compiled, x, tmp_path, monkeypatch):
    dest = tmp_path / "art"
    compiled.save(str(dest))
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("fxpress.runtime.save.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        _scaled(compiled, 2.0).save(str(dest))
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    np.testing.assert_allclose(fxpress.load(dest)(x.numpy()), compiled(x.numpy()), rtol=0, atol=1e-6)


def test_failing_rename_puts_the_old_artifact_back(compiled, x, tmp_path, monkeypatch):
    dest = tmp_path / "art"
    compiled.save(str(dest))
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".art.tmp-"):
            raise OSError("rename failed")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        _scaled(compiled, 2.0).save(str(dest))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_save_never_replaces_a_directory_that_is_not_an_artifact(compiled, tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not empty and holds no fxpress artifact"):
        compiled.save(str(precious))
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="a file of that name exists"):
        compiled.save(str(tmp_path / "file"))
    empty = tmp_path / "empty"
    empty.mkdir()
    compiled.save(str(empty))  # an empty directory is fine
    assert (empty / "manifest.json").is_file()


# -- targets -------------------------------------------------------------------


def test_unknown_target_lists_valid_targets(graph):
    with pytest.raises(TargetError) as info:
        fxpress.compile(graph, target="x87")
    msg = str(info.value)
    assert msg.startswith("unknown target 'x87'; valid targets: eager, x86,")
    for name in ("x86-avx2", "x86-avx512", "x86-amx", "arm", "cuda"):
        assert name in msg


def test_bad_thread_count(graph):
    with pytest.raises(TargetError, match="num_threads must be a positive int, got 0"):
        fxpress.compile(graph, target="x86", num_threads=0)


def _host_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def test_host_build_records_the_instruction_sets_it_may_use(artifact):
    requires = json.loads((artifact / "manifest.json").read_text())["target"]["requires"]
    assert requires == sorted(requires) and set(requires) <= _host_flags()
    for flag in ("avx2", "fma", "avx512f"):
        assert (flag in requires) == (flag in _host_flags())


def test_artifact_needing_missing_cpu_features_is_refused(artifact, tmp_path):
    copy = _copy(artifact, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"]["requires"] = [*manifest["target"]["requires"], "imaginary_isa"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"needs CPU features \['imaginary_isa'\] that this machine lacks"):
        fxpress.load(copy)


def _without_amx(monkeypatch):
    """Run the test as on a host without AMX (the CPU flags that targets.py and the loader read)."""
    import importlib

    from fxpress.backends.tvm import targets

    load = importlib.import_module("fxpress.runtime.load")
    flags = frozenset(_host_flags() - {"amx_int8", "amx_tile", "amx_bf16"})
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: flags)
    monkeypatch.setattr(load, "host_cpu_flags", lambda: flags)


def test_target_needing_missing_cpu_features(graph, monkeypatch):
    _without_amx(monkeypatch)
    with pytest.raises(TargetError) as info:
        fxpress.compile(graph, target="x86-amx")
    msg = str(info.value)
    assert "target 'x86-amx' needs CPU features" in msg and "'amx_int8'" in msg and "lacks" in msg
    assert "cross=True" in msg


def test_cross_build_is_saved_but_not_run_here(graph, x, tmp_path, monkeypatch):
    _without_amx(monkeypatch)
    module = fxpress.compile(graph, target="x86-amx", cross=True)
    with pytest.raises(BackendError, match="does not run on this machine"):
        module(x.numpy())
    module.save(str(tmp_path / "amx"))
    with pytest.raises(ArtifactError, match="does not run on this machine"):
        fxpress.load(tmp_path / "amx")


# -- dynamic batch and determinism ----------------------------------------------


def test_dynamic_batch(tmp_path):
    torch.manual_seed(13)
    model = BNMLP().eval()
    graph = fxpress.capture(model, (torch.randn(4, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    module = fxpress.compile(fxpress.optimize(graph, "default"), target="x86")
    assert module.inputs == [{"name": "x", "shape": [None, 16], "dtype": "float32"}]
    loaded = fxpress.load(module.save(str(tmp_path / "mlp")))
    for n in (1, 3, 8):
        v = torch.randn(n, 16)
        assert (module(v) - model(v)).abs().max() <= 1e-4
        np.testing.assert_allclose(loaded(v.numpy()), model(v).detach().numpy(), rtol=0, atol=1e-4)
    with pytest.raises(InputError, match=r"input 'x' must have shape \['\?', 16\], got \[3, 15\]"):
        loaded(np.zeros((3, 15), np.float32))


def test_same_graph_same_weights(graph, artifact, tmp_path, x):
    again = Path(fxpress.compile(graph, target="x86").save(str(tmp_path / "again")))
    assert sha256(again / "weights.safetensors") == sha256(artifact / "weights.safetensors")
    first = json.loads((artifact / "manifest.json").read_text())
    second = json.loads((again / "manifest.json").read_text())
    assert first["params"] == second["params"] and first["inputs"] == second["inputs"]
    np.testing.assert_array_equal(fxpress.load(again)(x.numpy()), fxpress.load(artifact)(x.numpy()))


class TwoOutputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(v)
        return torch.relu(y), y.sum(1, keepdim=True)


def test_several_outputs_come_back_as_a_tuple(tmp_path):
    model = TwoOutputs().eval()
    v = torch.randn(2, 4)
    module = fxpress.compile(fxpress.capture(model, (v,)), target="x86")
    assert [o["shape"] for o in module.manifest["outputs"]] == [[2, 3], [2, 1]]
    loaded = fxpress.load(module.save(str(tmp_path / "two")))
    for out in (module(v), loaded(v)):
        assert isinstance(out, tuple) and len(out) == 2
        for got, want in zip(out, model(v), strict=True):
            assert (got - want).abs().max() <= 1e-5


def _aligned(a: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A copy of `a` whose data starts on an `alignment`-byte boundary."""
    raw = np.empty(a.nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    out = raw[offset : offset + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("writeable", [True, False])
def test_aligned_and_read_only_inputs(compiled, cnn_model, x, writeable):
    a = _aligned(x.numpy())
    a.flags.writeable = writeable  # e.g. np.load(mmap_mode="r"), np.asarray(PIL image)
    expected = cnn_model(x).detach().numpy()
    np.testing.assert_allclose(compiled(a), expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(a, x.numpy())  # the input is not written to
    strided = np.asfortranarray(x.numpy())
    np.testing.assert_allclose(compiled(strided), expected, rtol=0, atol=1e-4)


class Concat(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], 1).clamp(min=-1.5, max=1.0)


def test_two_inputs_no_parameters(tmp_path):
    a, b = torch.randn(2, 4), torch.randn(2, 3)
    module = fxpress.compile(fxpress.capture(Concat(), (a, b)), target="x86")
    loaded = fxpress.load(module.save(str(tmp_path / "cat")))
    np.testing.assert_array_equal(loaded(a.numpy(), b.numpy()), Concat()(a, b).numpy())
    with pytest.raises(InputError, match=r"expected 2 input\(s\) \(a, b\), got 1"):
        loaded(a.numpy())
    with pytest.raises(InputError, match=r"input 'b' must have shape \[2, 3\], got \[2, 4\]"):
        loaded(a.numpy(), a.numpy())
