"""Tuning: records cached per target, replayed by compile, and the error paths.

The fast tests write a tuning record by hand (a small real schedule, stored
through MetaSchedule's database API exactly where `fxpress tune` stores its
own) to check replay, target keying, disabling and corrupt files. The slow
test runs a real MetaSchedule search of a few trials through the CLI (about a
minute on the shared 2-core VM, most of it starting worker processes).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

import fxpress
from fxpress.backends.tvm.targets import resolve_target
from fxpress.backends.tvm.tuning.records import CACHE_ENV, open_records, target_key
from fxpress.backends.tvm.tuning.search import tune
from fxpress.backends.tvm.tuning.tasks import tuning_tasks
from fxpress.cli import main
from fxpress.errors import BackendError, TargetError
from fxpress.runtime.cpu import host_cpu_flags

pytestmark = pytest.mark.tvm

MODEL_SOURCE = textwrap.dedent(
    """
    import torch

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).eval()
    """
)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tune") / "model.py"
    path.write_text(MODEL_SOURCE)
    return path


@pytest.fixture(scope="module")
def linear(model_file: Path) -> tuple[torch.nn.Module, torch.Tensor, fxpress.Graph]:
    namespace: dict = {}
    exec(model_file.read_text(), namespace)
    model = namespace["build"]()
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    return model, x, fxpress.capture(model, (x,))


@pytest.fixture(autouse=True)
def _empty_default_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tuning="auto"`` must never read the developer's own cache here."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "default-cache"))


def _hand_record(cache: Path, graph: fxpress.Graph, target: str = "x86", record_target: object = None) -> str:
    """Store a real (untimed) schedule for the model's matmul task under `target`'s key; its function name."""
    spec = resolve_target(target)
    tasks, _ = tuning_tasks(graph, spec)
    task = tasks[0]
    mod = task.dispatched[0]
    sch = s_tir.Schedule(mod)
    matmul = sch.get_child_blocks(sch.get_sblock("root"))[0]
    rows = sch.get_loops(matmul)[0]
    outer, _ = sch.split(rows, factors=[None, 2])
    sch.parallel(outer)
    directory = cache / target_key(spec.target, spec.name)
    directory.mkdir(parents=True, exist_ok=True)
    db = ms.database.JSONDatabase(work_dir=str(directory))
    workload = db.commit_workload(mod)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [1e-5], record_target or spec.target, args))
    return task.task_name


def _eager(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 64)
        self.norm = torch.nn.LayerNorm(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.sigmoid(self.fc(x)) * 2.0 + x).transpose(0, 1).contiguous()


def test_tasks_are_main_reductions_biggest_first() -> None:
    graph = fxpress.capture(_Block().eval(), (torch.randn(8, 64),))
    tasks, skipped = tuning_tasks(graph, resolve_target("x86"))
    names = [t.task_name for t in tasks]
    assert len(names) == 2 and names[0].startswith("fused_matmul") and "sigmoid" in names[0]
    assert names[1] == "add_layer_norm"  # the residual add went into it (add_norm.py)
    # the weight transpose/packing of main_transform_params is no task; the last transpose is element-wise
    assert skipped == {"transpose": "element-wise"}


def test_compile_replays_a_record_and_matches_eager(linear, tmp_path: Path) -> None:
    model, x, graph = linear
    name = _hand_record(tmp_path, graph)
    compiled = fxpress.compile(graph, "x86", num_threads=1, tuning=tmp_path)
    tuning = compiled.manifest["tuning"]
    assert tuning["functions_from_records"] == 1 and tuning["functions"] == [name]
    assert Path(tuning["records"]).parent == tmp_path
    assert "apply-records" in compiled.manifest["lowering_s"]
    np.testing.assert_allclose(compiled.run_numpy(x.numpy())[0], _eager(model, x), rtol=1e-5, atol=1e-5)


def test_auto_reads_the_default_cache(linear, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, graph = linear
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    _hand_record(tmp_path, graph)
    assert fxpress.compile(graph, "x86").manifest["tuning"]["functions_from_records"] == 1


def test_no_records_when_disabled_empty_or_for_another_target(linear, tmp_path: Path) -> None:
    model, x, graph = linear
    cache = tmp_path / "cache"
    _hand_record(cache, graph)
    off = fxpress.compile(graph, "x86", tuning=False).manifest["tuning"]
    assert off == {"records": None, "functions_from_records": 0, "functions": []}
    (tmp_path / "empty").mkdir()
    assert fxpress.compile(graph, "x86", tuning=tmp_path / "empty").manifest["tuning"]["functions_from_records"] == 0
    # a record filed under this target's key but made for another CPU is never used
    other = tmp_path / "other"
    haswell = resolve_target("x86-avx2", cross=True).target
    _hand_record(other, graph, record_target=haswell)
    assert open_records(resolve_target("x86"), other) is None
    compiled = fxpress.compile(graph, "x86", tuning=other)
    assert compiled.manifest["tuning"]["functions_from_records"] == 0
    np.testing.assert_allclose(compiled.run_numpy(x.numpy())[0], _eager(model, x), rtol=1e-5, atol=1e-5)
    if {"avx2", "fma"} <= host_cpu_flags():  # another preset looks in another directory
        assert fxpress.compile(graph, "x86-avx2", tuning=cache).manifest["tuning"]["functions_from_records"] == 0


def test_target_key_ignores_threads_not_the_cpu() -> None:
    one, two = resolve_target("x86", num_threads=1), resolve_target("x86", num_threads=2)
    assert target_key(one.target, "x86") == target_key(two.target, "x86")
    assert target_key(one.target, "x86").startswith("x86-")
    avx2 = resolve_target("x86-avx2", cross=True)
    assert target_key(avx2.target, avx2.name) != target_key(one.target, "x86")


def test_corrupt_database_is_an_error_naming_the_file(linear, tmp_path: Path) -> None:
    _, _, graph = linear
    _hand_record(tmp_path, graph)
    records = next(tmp_path.iterdir()) / "database_tuning_record.json"
    with records.open("a") as f:
        f.write("{not json\n")
    with pytest.raises(BackendError, match=r"database_tuning_record\.json is corrupt \(line 2") as err:
        fxpress.compile(graph, "x86", tuning=tmp_path)
    assert str(records) in str(err.value) and "tuning=False" in str(err.value)
    with pytest.raises(BackendError, match="is corrupt"):
        tune(graph, "x86", budget_s=5, cache_dir=tmp_path, progress=False)


def test_bad_input(linear, tmp_path: Path) -> None:
    _, _, graph = linear
    for budget in (-1, 0, float("nan"), float("inf"), "60"):
        with pytest.raises(BackendError, match="budget_s must be a positive number"):
            tune(graph, budget_s=budget, cache_dir=tmp_path)
    with pytest.raises(BackendError, match="trials must be a positive int"):
        tune(graph, budget_s=5, trials=0, cache_dir=tmp_path)
    with pytest.raises(TargetError, match="unknown target 'x87'"):
        tune(graph, "x87", budget_s=5, cache_dir=tmp_path)
    with pytest.raises(TargetError, match="builds for another one"):
        tune(graph, "arm", budget_s=5, cache_dir=tmp_path)
    with pytest.raises(BackendError, match="takes an fxpress Graph"):
        tune(torch.nn.Linear(2, 2), budget_s=5, cache_dir=tmp_path)
    with pytest.raises(BackendError, match="does not exist"):
        fxpress.compile(graph, "x86", tuning=tmp_path / "missing")
    with pytest.raises(BackendError, match="tuning must be"):
        fxpress.compile(graph, "x86", tuning=42)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_cli_tune_bad_input_and_compile_no_tuning(
    model_file: Path, linear, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = f"{model_file}:build"
    assert main(["tune", model, "--input-shape", "8,64", "--budget-s", "-5"]) == 2
    assert "error: --budget-s must be a positive number" in capsys.readouterr().err
    assert main(["tune", model, "--input-shape", "8,64", "--target", "x87"]) == 2
    assert "unknown target 'x87'" in capsys.readouterr().err
    cache = tmp_path / "cache"
    _hand_record(cache, linear[2])
    monkeypatch.setenv(CACHE_ENV, str(cache))
    for flags, expected in (([], 1), (["--no-tuning"], 0)):
        out = tmp_path / f"art{expected}"
        args = ["compile", model, "--input-shape", "8,64", "--passes", "dce", "-o", str(out), *flags]
        assert main(args) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["tuning"]["functions_from_records"] == expected


@pytest.mark.slow
def test_cli_tune_finds_caches_and_compile_replays(
    model_file: Path, linear, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, x, graph = linear
    cache = tmp_path / "cache"
    args = ["tune", f"{model_file}:build", "--input-shape", "8,64", "--passes", "dce"]
    args += ["--budget-s", "60", "--trials", "8", "--cache-dir", str(cache), "--keep-slower", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "tune 1/1 fused_matmul" in captured.err  # the progress line
    (task,) = report["tasks"]
    assert 1 <= task["trials"] <= 8 and task["valid"] >= 1
    assert task["tuned_us"] > 0 and task["rule_us"] > 0 and task["kept"]
    (directory,) = cache.iterdir()
    assert directory.name == report["key"] == target_key(resolve_target("x86").target, "x86")
    workloads = (directory / "database_workload.json").read_text().splitlines()
    assert len(workloads) == 1
    assert json.loads((directory / "target.json").read_text())["preset"] == "x86"
    compiled = fxpress.compile(graph, "x86", tuning=cache)
    assert compiled.manifest["tuning"]["functions_from_records"] == 1
    np.testing.assert_allclose(compiled.run_numpy(x.numpy())[0], _eager(model, x), rtol=1e-5, atol=1e-5)
