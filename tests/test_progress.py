"""fxpress.progress: compile, calibration and the CLI report their steps on stderr when asked, never on stdout."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import fxpress
from fxpress import progress
from fxpress.backends.tvm.lower import lowering_stages
from fxpress.backends.tvm.targets import resolve_target
from fxpress.cli import main
from fxpress.passes.calibrate import Calibrate

STAGES = [name for name, _ in lowering_stages(resolve_target("x86"))]


def _mlp() -> fxpress.Graph:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    return fxpress.capture(model, (torch.randn(2, 8),))


def _batches(n: int) -> list[tuple[torch.Tensor]]:
    return [(torch.randn(2, 8),) for _ in range(n)]


def test_switch_argument_env_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    assert not progress.enabled()  # pytest's stderr is no terminal
    assert progress.enabled(default=True) and progress.enabled(True)
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled() and not progress.enabled(False)
    monkeypatch.setenv(progress.ENV, "off")
    assert not progress.enabled(default=True) and progress.enabled(True)


@pytest.mark.tvm
def test_compile_reports_every_stage_on_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    graph = _mlp()
    capfd.readouterr()
    fxpress.compile(graph, "x86", num_threads=1, tuning=False, progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    for i, name in enumerate(STAGES, 1):
        assert f"lower {i}/{len(STAGES)} {name} ...\n" in err
        assert f"lower {i}/{len(STAGES)} {name}: " in err
    for step in ("export/import", "build for x86", "transform parameters"):
        assert f"[fxpress] {step}: " in err


def test_calibration_shows_its_batch_count(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    observed = fxpress.optimize(_mlp(), "observe")
    monkeypatch.setenv(progress.ENV, "1")
    capfd.readouterr()
    fxpress.optimize(observed, Calibrate(data=_batches(5)))
    out, err = capfd.readouterr()
    assert out == "" and "calibrate" in err and "5/5" in err
    fxpress.optimize(observed, Calibrate(data=iter(_batches(3))))  # no len: a running count
    assert "3batch" in capfd.readouterr().err.replace(" ", "")


@pytest.mark.tvm
def test_progress_off_writes_nothing(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(progress.ENV, "0")
    observed = fxpress.optimize(_mlp(), "observe")
    capfd.readouterr()
    fxpress.optimize(observed, Calibrate(data=_batches(2)))
    fxpress.compile(_mlp(), "x86", num_threads=1, tuning=False)
    assert capfd.readouterr() == ("", "")


@pytest.mark.tvm
def test_cli_compile_shows_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "mlp.py"
    model.write_text(
        textwrap.dedent(
            """
            import torch

            def build():
                torch.manual_seed(0)
                return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
            """
        )
    )
    monkeypatch.setenv(progress.ENV, "1")
    args = ["compile", f"{model}:build", "--input-shape", "2,8", "--passes", "dce", "--no-tuning"]
    assert main([*args, "-o", str(tmp_path / "art"), "--threads", "1"]) == 0
    out, err = capfd.readouterr()
    assert all(f" {name}: " in err for name in STAGES) and "transform parameters" in err
    assert "[fxpress]" not in out and "wrote" in out
