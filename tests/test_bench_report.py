"""The benchmark harness's report and contender selection (tools/bench), without running any model.

Cheap checks that the OpenVINO columns and ratios reach results.md and
results.json, that the ISA of an fxpress build is read from its manifest
(an ``isa`` entry first, else the target's mcpu / requires), and which
contenders each case gets. Nothing here needs openvino or nncf installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools.bench import contenders as ct
from tools.bench import report
from tools.bench.cases import CASE_NAMES, make_cases
from tools.bench.run import parse_args


def _row(contender: str, ms: float, **info: Any) -> dict[str, Any]:
    return {
        "model": "resnet18",
        "shape": "1x3x64x64",
        "batch": 1,
        "threads": 1,
        "contender": contender,
        "median_ms": ms,
        "rounds": 3,
        "cpu_per_wall": 1.0,
        "info": info,
    }


def _run(results: list[dict[str, Any]]) -> dict[str, Any]:
    machine = {
        "cpu_model": "Test CPU",
        "cpu_flags": ["avx2", "avx512f"],
        "isa_flags": {"avx2": True, "avx512f": True, "avx512_vnni": False, "amx_int8": False},
        "packages": {"openvino": "2026.4.1"},
    }
    config = {"quick": True, "warmup": 1, "rounds": 3, "gap_ms": 20, "budget_s": 5, "min_rounds": 1, "attn": "eager"}
    return {
        "started": "now",
        "wall_s": 1.0,
        "loadavg_start": [],
        "loadavg_end": [],
        "machine": machine,
        "config": config,
        "results": results,
        "comparisons": report.comparisons(results),
        "notes": [],
    }


RESULTS = [
    _row("eager", 40.0),
    _row("fxpress", 20.0, isa={"isa": "x86-avx512", "source": "manifest.isa", "mcpu": "skylake-avx512"}),
    _row("ort", 10.0),
    _row("openvino", 8.0, inference_precision="f32", kernel_isa={"avx512": 20}, int8_layers=0),
    _row("openvino-default", 5.0, inference_precision="bf16", kernel_isa={"amx": 20}, int8_layers=0),
    _row("fxpress-int8", 6.0, cosine_vs_eager=0.9996, isa={"isa": "x86-avx512", "source": "manifest.isa"}),
    _row("openvino-int8", 4.0, cosine_vs_eager=0.9998, kernel_isa={"avx512": 18}, int8_layers=17),
]


def test_comparisons_ratios() -> None:
    (c,) = report.comparisons(RESULTS)
    assert c["fxpress_vs_ort"] == pytest.approx(2.0)
    assert c["fxpress_vs_openvino"] == pytest.approx(2.5)
    assert c["fxpress_int8_vs_openvino_int8"] == pytest.approx(1.5)
    assert c["openvino_int8_ms"] == 4.0 and c["openvino_int8_cosine"] == 0.9998
    # a missing contender leaves its ratio empty rather than failing
    (c,) = report.comparisons([r for r in RESULTS if r["contender"] != "openvino-int8"])
    assert c["fxpress_int8_vs_openvino_int8"] is None


def test_markdown_and_json_carry_openvino(tmp_path: Path) -> None:
    js, md = report.write(_run(RESULTS), tmp_path)
    text = md.read_text()
    assert "| fxpress / OpenVINO |" in text and "| fxpress int8 / OpenVINO int8 |" in text
    assert "| resnet18 | 1 | 20.000 | 10.000 | 8.000 | 2.00 | 2.50 | 6.000 | 4.000 | 1.50 | 0.9996 | 0.9998 |" in text
    assert "openvino-default (bf16)" in text
    assert "avx2 yes, avx512f yes, avx512_vnni no, amx_int8 no" in text
    assert "x86-avx512; LLVM mcpu skylake-avx512 | manifest.isa |" in text
    saved = json.loads(js.read_text())
    assert saved["comparisons"][0]["fxpress_vs_openvino"] == pytest.approx(2.5)


def test_fxpress_isa_prefers_the_manifest_entry() -> None:
    target = {
        "target": '{"kind":"llvm","num-cores":1,"mcpu":"sapphirerapids"}',
        "requires": ["avx2", "amx_int8", "bmi2"],
    }
    assert ct.fxpress_isa({"isa": "x86-amx", "target": target})["source"] == "manifest.isa"
    assert ct.fxpress_isa({"isa": {"name": "x86-vnni"}, "target": target})["isa"] == "x86-vnni"
    assert ct.fxpress_isa({"target": {**target, "isa": "x86-avx2"}})["source"] == "manifest.target.isa"
    fallback = ct.fxpress_isa({"target": target})
    assert fallback == {
        "isa": "sapphirerapids (avx2 amx_int8)",
        "source": "target mcpu/requires",
        "mcpu": "sapphirerapids",
        "requires": ["avx2", "amx_int8"],
    }


def test_contenders_per_case() -> None:
    cases = make_cases(image_size=32, seq_len=8)
    assert "efficientnet-lite0" in CASE_NAMES and cases["efficientnet-lite0"].calibration is not None
    applying = {n: [c for c in ct.CONTENDERS if ct.applies(c, cases[n].family, cases[n].calibration is not None)]
                for n in ("digits-cnn", "efficientnet-lite0", "minilm-b1")}  # fmt: skip
    assert not any(c in ct.INT8 for c in applying["digits-cnn"])
    assert {"fxpress-int8", "openvino-int8"} <= set(applying["efficientnet-lite0"])
    assert "ort-int8" not in applying["efficientnet-lite0"]  # dynamic int8 of Linear layers: MiniLM only
    assert {"fxpress-int8", "openvino-int8", "torch-int8", "ort-int8"} <= set(applying["minilm-b1"])
    assert "fxpress-bf16" in applying["minilm-b1"] and "fxpress-bf16" not in applying["efficientnet-lite0"]
    assert parse_args(["--quick"]).models == list(CASE_NAMES)


def test_a_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # a host with openvino but without nncf (whether or not this one has the bench extra)
    found = {"openvino": True, "nncf": False}
    real = ct.importlib.util.find_spec
    monkeypatch.setattr(
        ct.importlib.util,
        "find_spec",
        lambda name: (object() if found[name] else None) if name in found else real(name),
    )
    assert ct.missing_packages("openvino-int8") == ["nncf"]
    assert ct.missing_packages("eager") == []
    assert ct.install_hint(["nncf"]) == "pip install -e '.[bench]'"
