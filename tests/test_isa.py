"""The ISA layer: presets resolve to one ISA, the host preset takes the strongest, bad targets are named.

Hosts are simulated by replacing the CPU flags that targets.py and the
artifact loader read, so every case runs on every machine: an AVX2-only host,
an AVX-512 host without VNNI, a VNNI host without AMX, an AMX host.
"""

from __future__ import annotations

import importlib
import itertools
import json
import re
from pathlib import Path

import pytest
import torch

import fxpress
from fxpress.backends.tvm import targets
from fxpress.backends.tvm.isa import ISAS, X86_ISAS, best_x86_isa
from fxpress.errors import ArtifactError, TargetError

load_module = importlib.import_module("fxpress.runtime.load")  # (the package re-exports a function `load`)
ROOT = Path(__file__).resolve().parent.parent
AVX2_HOST = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})  # an AMD EPYC (znver3)
AVX512_HOST = AVX2_HOST | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}  # Skylake-SP
VNNI_HOST = AVX512_HOST | {"avx512_vnni"}  # Cascade Lake
AMX_HOST = VNNI_HOST | {"avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}  # Sapphire Rapids


def _host(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str]) -> None:
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: flags)
    monkeypatch.setattr(load_module, "host_cpu_flags", lambda: flags)


@pytest.mark.parametrize(
    ("flags", "isa"),
    [
        (frozenset(), "x86-64"),
        (AVX2_HOST, "x86-avx2"),
        (AVX512_HOST, "x86-avx512"),
        (VNNI_HOST, "x86-vnni"),
        (AMX_HOST, "x86-amx"),
        (AMX_HOST - {"amx_int8"}, "x86-vnni"),  # tiles without int8 tile math are no use to int8
    ],
)
def test_host_preset_takes_the_strongest_isa_the_host_has(
    flags: frozenset[str], isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert best_x86_isa(flags).name == isa
    _host(monkeypatch, flags)
    spec = targets.resolve_target("x86")
    assert spec.isa.name == isa and spec.host_runnable
    assert set(spec.requires) <= flags  # the build may use what the host has, and records it


def test_every_preset_resolves_to_its_own_isa() -> None:
    for name in targets.TARGETS:
        if name == "x86":
            continue
        spec = targets.resolve_target(name, cross=True)
        assert spec.isa is ISAS[name], name
        assert spec.describe()["isa"] == name


def test_isas_are_ordered_weakest_flags_last() -> None:
    """Each x86 ISA needs at least what the next (weaker) one needs, so the first match is the strongest."""
    for stronger, weaker in itertools.pairwise(X86_ISAS):
        assert set(weaker.requires) <= set(stronger.requires), (stronger.name, weaker.name)


@pytest.mark.parametrize(
    ("preset", "flags", "missing"),
    [
        ("x86-amx", VNNI_HOST, "amx_int8"),
        ("x86-vnni", AVX512_HOST, "avx512_vnni"),
        ("x86-avx512", AVX2_HOST, "avx512f"),
    ],
)
def test_a_preset_the_host_cannot_run_is_refused_unless_cross(
    preset: str, flags: frozenset[str], missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host(monkeypatch, flags)
    with pytest.raises(TargetError) as info:
        targets.resolve_target(preset)
    msg = str(info.value)
    assert f"target {preset!r} needs CPU features" in msg and repr(missing) in msg and "cross=True" in msg
    spec = targets.resolve_target(preset, cross=True)
    assert not spec.host_runnable and missing in spec.requires


def test_rules_start_with_the_isas_own_kernels() -> None:
    generic = [type(r).__name__ for r in ISAS["x86-64"].schedule_rules()]
    assert not any("Int8" in name for name in generic)
    for name in ("x86-avx2", "x86-avx512", "x86-vnni", "x86-amx"):
        rules = [type(r).__name__ for r in ISAS[name].schedule_rules()]
        assert rules[-len(generic) :] == generic, name  # the generic rules come last, in the same order
        assert any("Int8" in r for r in rules[: -len(generic)]), name


@pytest.mark.tvm
def test_an_artifact_for_a_missing_isa_is_refused_when_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU()).eval()
    graph = fxpress.capture(model, (torch.randn(2, 16),))
    saved = fxpress.compile(graph, target="x86-amx", cross=True).save(str(tmp_path / "amx"))
    manifest = json.loads((Path(saved) / "manifest.json").read_text())
    assert manifest["target"]["isa"] == "x86-amx" and "amx_int8" in manifest["target"]["requires"]
    _host(monkeypatch, VNNI_HOST)
    manifest["target"]["host_runnable"] = True  # as if built on an AMX machine and copied here
    (Path(saved) / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ArtifactError, match=r"needs CPU features \['amx_int8', 'amx_bf16', 'amx_tile'\] that this machine lacks"
    ):
        fxpress.load(saved)


def test_nothing_outside_the_target_layer_tests_cpu_flags() -> None:
    """One target, one place: CPU flags are read by targets.py (and the artifact loader), never by a converter."""
    allowed = {
        "fxpress/backends/tvm/targets.py",
        "fxpress/runtime/cpu.py",
        "fxpress/runtime/load.py",
        "fxpress/runtime/amx.py",
        "fxpress/backends/tvm/kernels/base.py",  # vector width of the target being built (LLVM's view, not the host)
    }
    pattern = re.compile(r"host_cpu_flags\(|has_avx2\(|/proc/cpuinfo")
    offenders = []
    for path in sorted((ROOT / "fxpress").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed or "/isa/" in rel or "/kernels/" in rel:
            continue
        if pattern.search(path.read_text()):
            offenders.append(rel)
    assert not offenders, offenders
