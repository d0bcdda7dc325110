"""The command line: compile, run, inspect, passes, and its error paths."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from fxpress.cli import main

MODEL_SOURCE = textwrap.dedent(
    """
    import torch

    def build():
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5),
        )
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2.0)
        return m.eval()

    def not_a_model():
        return 42
    """
)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.py"
    path.write_text(MODEL_SOURCE)
    return path


@pytest.fixture(scope="module")
def artifact(model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "art"
    rc = main(
        [
            "compile",
            f"{model_file}:build",
            "--input-shape",
            "2,3,8,8",
            "--passes",
            "fold-bn,dce",
            "-o",
            str(out),
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    return out


@pytest.mark.tvm
def test_compile_run_matches_eager(artifact, model_file, tmp_path, capsys) -> None:
    namespace: dict = {}
    exec(model_file.read_text(), namespace)
    model = namespace["build"]()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(artifact), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(y - ref).max() <= 1e-4
    assert "output0: float32[2, 5]" in capsys.readouterr().out


@pytest.mark.tvm
def test_inspect_shows_manifest_and_trace(artifact, capsys) -> None:
    assert main(["inspect", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert "pipeline   fold-bn,dce" in out
    assert "fold-bn" in out.split("trace")[1] and "modified" in out
    assert main(["inspect", str(artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target"]["name"] == "x86"


def test_passes_lists_registry_and_targets(capsys) -> None:
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in ("fold-bn", "fold-constants", "dce", "default", "x86", "eager"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--passes", "fold-bnn"], "unknown pass 'fold-bnn'"),
        (["--passes", "fold-constants{max-growht=2}"], "valid options: max-growth"),
        (["--target", "risc-v"], "valid targets"),
        (["--input-shape", "2,x,8"], "--input-shape"),
    ],
)
def test_compile_bad_arguments_exit_2(model_file, tmp_path, capsys, argv, needle) -> None:
    base = ["compile", f"{model_file}:build", "-o", str(tmp_path / "out")]
    if "--input-shape" not in argv:
        base += ["--input-shape", "2,3,8,8"]
    with pytest.raises(SystemExit) if argv[0] == "--input-shape" else _no_raise():
        rc = main(base + argv)
        assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compile_factory_errors(model_file, tmp_path, capsys) -> None:
    assert main(["compile", f"{model_file}:not_a_model", "--input-shape", "1,3,8,8", "-o", str(tmp_path / "o")]) == 2
    assert "not a torch.nn.Module" in capsys.readouterr().err
    assert main(["compile", f"{model_file}:missing", "--input-shape", "1,3,8,8", "-o", str(tmp_path / "o")]) == 2
    assert "no callable 'missing'" in capsys.readouterr().err
    assert main(["compile", "no_such_module_xyz:build", "--input-shape", "1", "-o", str(tmp_path / "o")]) == 2
    assert "cannot import" in capsys.readouterr().err


@pytest.mark.tvm
def test_run_bad_inputs_exit_2(artifact, tmp_path, capsys) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 9, 8), np.float32))
    assert main(["run", str(artifact), "--input", str(tmp_path / "wrong.npy")]) == 2
    assert "must have shape [2, 3, 8, 8]" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nowhere")]) == 2
    assert "no artifact" in capsys.readouterr().err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_prune_report(model_file, capsys) -> None:
    assert main(["prune-report", f"{model_file}:build", "--input-shape", "2,3,8,8", "--ratio", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ratio"] == 0.5
    assert main(["prune-report", f"{model_file}:build", "--input-shape", "2,3,8,8", "--ratio", "1.5"]) == 2
    assert "ratio" in capsys.readouterr().err


QUANT_SOURCE = textwrap.dedent(
    """
    import torch

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()

    def batches():
        g = torch.Generator().manual_seed(5)
        return [(torch.randn(4, 12, generator=g),) for _ in range(3)]
    """
)
QUANT_PASSES = "observe{per-channel=true},calibrate,fold-qdq"


@pytest.fixture(scope="module")
def quant_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_quant") / "qmodel.py"
    path.write_text(QUANT_SOURCE)
    return path


def _quant_namespace(quant_file) -> dict:
    namespace: dict = {}
    exec(quant_file.read_text(), namespace)
    return namespace


def test_quant_report_from_npy_directory_matches_the_api(quant_file, tmp_path, capsys) -> None:
    from fxpress.cli import QUANT_PIPELINE
    from fxpress.passes import PIPELINES
    from fxpress.reports.quant_report import DEFAULT_PIPELINE, quant_report

    assert QUANT_PIPELINE == DEFAULT_PIPELINE == "int8" in PIPELINES  # one named pipeline; the CLI names it
    ns = _quant_namespace(quant_file)
    data = ns["batches"]()
    for i, (x,) in enumerate(data):
        np.save(tmp_path / f"b{i}.npy", x.numpy())
    argv = ["quant-report", f"{quant_file}:build", "--input-shape", "4,12", "--calibration", str(tmp_path)]
    assert main([*argv, "--passes", QUANT_PASSES, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ref = quant_report(ns["build"](), data, passes=QUANT_PASSES)
    assert doc["batches"] == 3 and doc["pipeline"] == QUANT_PASSES
    assert [r["name"] for r in doc["layers"]] == [r.name for r in ref.rows]
    assert [r["sqnr_db"] for r in doc["layers"]] == pytest.approx([r.sqnr_db for r in ref.rows], abs=1e-5)
    assert doc["model_sqnr_db"] == pytest.approx(ref.model_sqnr_db, abs=1e-5)
    assert main([*argv, "--limit", "1"]) == 0  # the default pipeline, as a table
    out = capsys.readouterr().out
    assert "on 1 batches" in out and "worst first" in out and "observe{skip=[" in out


def test_quant_report_from_a_factory_and_its_errors(quant_file, tmp_path, capsys) -> None:
    model = f"{quant_file}:build"
    argv = ["quant-report", model, "--input-shape", "4,12", "--passes", QUANT_PASSES, "--json"]
    assert main([*argv, "--calibration", f"{quant_file}:batches"]) == 0
    assert len(json.loads(capsys.readouterr().out)["layers"]) == 2
    assert main([*argv, "--calibration", str(tmp_path / "nowhere")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    wrong = ["quant-report", model, "--input-shape", "5,12", "--calibration", f"{quant_file}:batches"]
    assert main(wrong) == 2
    assert "[4, 12], but the graph takes torch.float32 [5, 12]" in capsys.readouterr().err
    assert main([*argv, "--calibration", f"{quant_file}:batches", "--limit", "-1"]) == 2
    assert "--limit must be >= 0" in capsys.readouterr().err


def test_compile_calibration_flag_errors(quant_file, tmp_path, capsys) -> None:
    base = ["compile", f"{quant_file}:build", "--input-shape", "4,12", "-o", str(tmp_path / "out")]
    assert main([*base, "--passes", QUANT_PASSES]) == 2
    err = capsys.readouterr().err
    assert "calibrate needs calibration data" in err and "--calibration DIR" in err
    assert main([*base, "--passes", "fold-bn", "--calibration", f"{quant_file}:batches"]) == 2
    assert "the pipeline has no calibrate pass" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.tvm
def test_compile_with_calibration_is_bit_exact_with_the_python_pipeline(quant_file, tmp_path, capsys) -> None:
    import fxpress
    from fxpress.passes import Calibrate, FoldQDQ, Observe

    ns = _quant_namespace(quant_file)
    data = ns["batches"]()
    for i, (x,) in enumerate(data):
        np.savez(tmp_path / f"b{i}.npz", x.numpy())
    out = tmp_path / "art"
    argv = ["compile", f"{quant_file}:build", "--input-shape", "4,12", "--passes", QUANT_PASSES, "-o", str(out)]
    assert main([*argv, "--calibration", str(tmp_path), "--threads", "1"]) == 0
    graph = fxpress.capture(ns["build"](), data[0])
    ref = fxpress.optimize(graph, [Observe(per_channel=True), Calibrate(data=data), FoldQDQ()])
    x = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
    np.testing.assert_array_equal(fxpress.load(out)(x), ref(torch.from_numpy(x)).numpy())
    assert main(["inspect", str(out)]) == 0
    assert f"pipeline   {QUANT_PASSES}" in capsys.readouterr().out
