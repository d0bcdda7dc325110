"""Shared fixtures: the verifier is on for every `optimize` call, torch is seeded, no tuning records.

Like TVM's autouse well-formed check, every pass run in the test suite is
followed by the full verifier (``FXPRESS_VERIFY=1``), whatever the caller's
environment says. ``fxpress.compile`` replays tuning records from the user's
cache by default; tests point the cache at an empty directory so that what
they measure is the schedule rules (tests/test_tune.py makes its own caches).
Models here are small enough to capture in ~50 ms.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

EXAMPLES = Path(__file__).parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """The script examples/NAME.py as a module (its `run` gives the small versions the tests check)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runnable_preset(name: str) -> str:
    """The target preset `name` when this host can run its ISA; else skip the test, naming the CPU flags it lacks."""
    from fxpress.backends.tvm.isa import ISAS
    from fxpress.runtime.cpu import host_cpu_flags

    missing = [f for f in ISAS[name].requires if f not in host_cpu_flags()]
    if missing:
        pytest.skip(f"target {name!r} needs CPU flags {missing} that this host lacks (built for cross use only)")
    return name


def s16_spec(threads: int = 1):
    """The ``x86-avx2`` target with the u8s8 kernels off: every int8 layer in the s16 (vpmaddwd) form."""
    import dataclasses

    from fxpress.backends.tvm.targets import resolve_target

    spec = resolve_target(runnable_preset("x86-avx2"), num_threads=threads)
    return dataclasses.replace(spec, isa=dataclasses.replace(spec.isa, u8s8=False))


@pytest.fixture(params=["x86-64", "x86-avx2", "x86"])
def int8_path(request: pytest.FixtureRequest) -> str:
    """A preset per int8 lowering: generic int32 (``x86-64``), the AVX2 kernels, and the host's strongest ISA."""
    return runnable_preset(request.param) if request.param != "x86" else "x86"


@pytest.fixture(autouse=True)
def _verify_every_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FXPRESS_VERIFY", "1")


@pytest.fixture(autouse=True)
def _no_tuning_records(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("FXPRESS_TUNING_CACHE", str(tmp_path_factory.getbasetemp() / "empty-tuning-cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomize_bn(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """Give a BatchNorm non-trivial running statistics (and affine parameters)."""
    with torch.no_grad():
        if bn.track_running_stats:
            bn.running_mean.uniform_(-1.0, 1.0)
            bn.running_var.uniform_(0.5, 2.0)
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn


class SmallCNN(nn.Module):
    """conv -> bn -> relu -> global average pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = randomize_bn(nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


class BNMLP(nn.Module):
    """linear -> BatchNorm1d -> relu -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.bn = randomize_bn(nn.BatchNorm1d(32))
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(1)
    return SmallCNN().eval()


@pytest.fixture
def cnn_input() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def mlp() -> BNMLP:
    torch.manual_seed(3)
    return BNMLP().eval()


@pytest.fixture
def mlp_input() -> torch.Tensor:
    return torch.randn(4, 16, generator=torch.Generator().manual_seed(4))
