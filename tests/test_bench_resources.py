"""tools/bench/resources.py: per-step peak memory and wall time (issue 20, resource limits).

The numbers themselves are the benchmark's (bench/resources.md); here: the sampler sees a step's own peak,
bad options are refused by name, and the report holds every step of every (model, pipeline).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tools.bench import resources


def test_a_steps_peak_includes_memory_it_freed_before_returning():
    sampler = resources.Sampler(period=0.002)
    steps: list[dict[str, Any]] = []
    with resources.measured(steps, "allocate", sampler):
        block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
        block.sum()
        import time

        time.sleep(0.05)
        del block
    with resources.measured(steps, "nothing", sampler):
        pass
    sampler.close()
    grown = steps[0]["peak_rss_mib"] - steps[0]["rss_before_mib"]
    assert grown >= 250, steps
    assert steps[1]["peak_rss_mib"] - steps[1]["rss_before_mib"] < 50, steps


def _fake(model: str, pipeline: str, timeout: float) -> dict[str, Any]:
    steps = [
        {"step": s, "wall_s": 1.0, "cpu_s": 1.0, "rss_before_mib": 100, "peak_rss_mib": 200 + i}
        for i, s in enumerate(("capture", "optimize", "compile x86"))
    ]
    return {"model": model, "pipeline": pipeline, "parameters": 2_000_000, "steps": steps,
            "peak_rss_mib": 202, "total_wall_s": 3.0}  # fmt: skip


def test_report_has_every_step_of_every_model_and_pipeline(tmp_path):
    assert resources.main(["--models", "minilm,bert-tiny", "--out-dir", str(tmp_path)], child=_fake) == 0
    table = (tmp_path / "resources.md").read_text()
    assert table.count("| compile x86 |") == 4  # 2 models x 2 pipelines
    data = json.loads((tmp_path / "resources.json").read_text())
    assert [(r["model"], r["pipeline"]) for r in data["results"]] == [
        ("minilm", "fp32"), ("minilm", "int8"), ("bert-tiny", "fp32"), ("bert-tiny", "int8")
    ]  # fmt: skip
    assert data["machine"]["cpu_model"]


@pytest.mark.parametrize(
    ("flag", "value", "word"), [("--models", "resnet", "model"), ("--pipelines", "fp16", "pipeline")]
)
def test_unknown_model_or_pipeline_is_refused_by_name(tmp_path, capsys, flag, value, word):
    with pytest.raises(SystemExit):
        resources.main([flag, value, "--out-dir", str(tmp_path)], child=_fake)
    assert f"unknown {word}(s) ['{value}']" in capsys.readouterr().err
