"""`fxpress auto` on the command line: the per-layer table, the JSON, the exit status of an unmet budget.

The model and its calibration batches are factories in this file
(``tests/test_auto_cli.py:tiny``), as a user would name theirs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fxpress.cli import main

pytestmark = pytest.mark.tvm
HERE = Path(__file__)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Mlp().eval()


def batches() -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 32, generator=g),) for _ in range(4)]


def test_cli_auto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["auto", f"{HERE}:tiny", "--input-shape", "4,32", "--calibration", f"{HERE}:batches"]
    args += ["--method", "int8", "--weight-bits", "8", "--max-candidates", "4", "--confirm", "1"]
    args += ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert main([*args, "--budget", "accuracy>=0.9"]) == 0
    out = capsys.readouterr().out
    assert "fc1 (linear [64, 32])" in out and "fc2 (linear [8, 64])" in out
    assert "budget accuracy>=0.9 met; best point:" in out
    data = json.loads((tmp_path / "out" / "auto.json").read_text())
    assert data["met"] and {t["method"] for t in data["layers"][0]["trials"]} == {"float", "int8"}
    assert (tmp_path / "out" / "auto_pareto.png").exists()
    # the same search from its cache with a floor no candidate meets (cosine is at most 1): exit status 3
    assert main([*args, "--budget", "accuracy>=1.5"]) == 3
    assert "no candidate meets the budget accuracy>=1.5; the closest point misses it" in capsys.readouterr().out


def test_cli_auto_bad_budget(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["auto", f"{HERE}:tiny", "--input-shape", "4,32", "--calibration", f"{HERE}:batches"]
    assert main([*args, "--budget", "fast"]) != 0
    assert "write accuracy>=0.99, latency<=4ms or size<=200KB" in capsys.readouterr().err
