"""The pass manager: copy semantics, trace, instruments, debug drift, analyses, errors."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch

import fxpress
from fxpress.errors import FxpressError, PassError, PipelineError, VerifyError
from fxpress.ir.annotations import Annotation, annotate
from fxpress.passes import (
    PASSES,
    Analysis,
    AnalysisManager,
    DumpIR,
    Pass,
    PassManager,
    PassResult,
    PrintIRAfter,
    Timing,
)

aten = torch.ops.aten
LOG: list[str] = []


class CountOps(Analysis):
    """A test analysis: the number of operator calls; logs every computation."""

    name = "count-ops"

    @classmethod
    def compute(cls, graph, am):
        LOG.append("compute")
        return graph.num_ops


class Users(Analysis):
    name = "users"

    @classmethod
    def compute(cls, graph, am):
        LOG.append("users")
        return {n.name: len(n.users) for n in graph.nodes()}


@dataclass(frozen=True)
class UseAnalysis(Pass):
    name = "use-analysis"

    def run(self, graph, am):
        LOG.append(f"use={am.get(CountOps)}")
        return PassResult(graph, modified=False)


@dataclass(frozen=True)
class ScaleWeights(Pass):
    """Multiplies every floating parameter by `factor` (a change the numbers show)."""

    name = "scale-weights"
    factor: float = 1.0
    keep: tuple[str, ...] = ()

    def run(self, graph, am):
        with torch.no_grad():
            for t in graph.params().values():
                if t.is_floating_point():
                    t.mul_(self.factor)
        return PassResult(graph, modified=True, preserved=frozenset(self.keep), stats={"factor": self.factor})


@dataclass(frozen=True)
class ReturnsNone(Pass):
    name = "returns-none"

    def run(self, graph, am):
        return None


@dataclass(frozen=True)
class Boom(Pass):
    name = "boom"

    def run(self, graph, am):
        raise RuntimeError("kaput")


@dataclass(frozen=True)
class BoomFx(Pass):
    name = "boom-fx"

    def run(self, graph, am):
        raise VerifyError("something is off")


@dataclass(frozen=True)
class Fresh(Pass):
    """Returns a new Graph object (a pass may)."""

    name = "fresh"

    def run(self, graph, am):
        return PassResult(graph.copy(), modified=False)


@dataclass(frozen=True)
class Inconsistent(Annotation):
    key = "inconsistent"

    def check(self, node):
        return "rank must be 4"


@dataclass(frozen=True)
class BadAnnotation(Pass):
    """Annotates the relu with an annotation whose check fails."""

    name = "bad-annotation"

    def run(self, graph, am):
        relu = next(n for n in graph.nodes("call_function") if n.target == aten.relu.default)
        annotate(relu, Inconsistent())
        return PassResult(graph, modified=True)


@dataclass(frozen=True)
class BreakShapes(Pass):
    """Swaps a linear weight for one of the wrong shape."""

    name = "break-shapes"

    def run(self, graph, am):
        linear = next(n for n in graph.nodes("call_function") if n.target == aten.linear.default)
        wrong = graph.add_param("wrong", torch.zeros(3, 3), before=linear)
        linear.args = (linear.args[0], wrong, *linear.args[2:])
        return PassResult(graph, modified=True)


@dataclass(frozen=True)
class PythonCall(Pass):
    """Routes the relu through a plain Python function, which no backend can lower."""

    name = "python-call"

    def run(self, graph, am):
        relu = next(n for n in graph.nodes("call_function") if n.target == aten.relu.default)
        relu.target = torch.relu
        return PassResult(graph, modified=True)


@dataclass(frozen=True)
class DanglingParam(Pass):
    """Points a get_attr at an attribute the module does not have."""

    name = "dangling-param"

    def run(self, graph, am):
        node = next(n for n in graph.nodes("get_attr") if n.target == "fc.weight")
        node.target = "fc.missing"
        return PassResult(graph, modified=True)


@dataclass(frozen=True)
class NodeError(Pass):
    """Raises a structured error about the relu: node and notes, no pass name in the message."""

    name = "node-error"

    def run(self, graph, am):
        relu = next(n for n in graph.nodes("call_function") if n.target == aten.relu.default)
        raise PassError("cannot take this relu", node=relu.name, notes=["  %1 = aten.relu(%0)", "  ^^^"])


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    for cls in (
        UseAnalysis,
        ScaleWeights,
        ReturnsNone,
        Boom,
        BoomFx,
        Fresh,
        BadAnnotation,
        BreakShapes,
        PythonCall,
        DanglingParam,
        NodeError,
    ):
        monkeypatch.setitem(PASSES, cls.name, cls)
    LOG.clear()


@pytest.fixture
def graph(cnn, cnn_input):
    return fxpress.capture(cnn, (cnn_input,))


# -- copy semantics ------------------------------------------------------------


def test_optimize_never_changes_the_callers_graph(graph, cnn, cnn_input):
    text = str(graph)
    params = {k: v.clone() for k, v in graph.params().items()}
    gm = graph.gm
    out = fxpress.optimize(graph, "fold-bn,scale-weights{factor=3.0},dce")
    assert out is not graph and out.gm is not graph.gm
    assert graph.gm is gm
    assert str(graph) == text
    assert graph.params().keys() == params.keys()
    for k, v in graph.params().items():
        assert torch.equal(v, params[k]), k
    assert graph.trace == [] and graph.properties == frozenset()
    torch.testing.assert_close(graph(cnn_input), cnn(cnn_input), rtol=0, atol=1e-6)
    assert str(out) != text


def test_empty_pipeline_returns_an_equal_copy(graph, cnn_input):
    out = fxpress.optimize(graph, "")
    assert out is not graph and str(out) == str(graph) and out.trace == []
    torch.testing.assert_close(out(cnn_input), graph(cnn_input), rtol=0, atol=0)


def test_optimize_takes_a_graph():
    with pytest.raises(PassError, match=r"optimize\(\) takes an fxpress Graph .* got Linear"):
        fxpress.optimize(torch.nn.Linear(2, 2), "dce")


# -- trace ---------------------------------------------------------------------


def test_trace_records_ops_bytes_and_modified(graph):
    out = fxpress.optimize(graph, "fold-bn,dce,fold-constants{max-growth=2.0}")
    assert out.pipeline == "fold-bn,dce,fold-constants{max-growth=2.0}"
    fold, dce, consts = out.trace
    # conv(8x3x3x3 + 8) + bn(4x8 f32 + i64 counter) + fc(4x8 + 4): 292 floats + 8 bytes
    assert (fold.pipeline, fold.nodes_before, fold.nodes_after) == ("fold-bn", 5, 4)
    assert (fold.param_bytes_before, fold.param_bytes_after) == (292 * 4 + 8, 260 * 4)
    assert fold.modified is True and fold.stats == {"folded": 1}
    assert (dce.nodes_before, dce.nodes_after, dce.modified) == (4, 4, False)
    assert dce.stats == {"removed_nodes": 0, "freed_bytes": 0}
    assert consts.modified is False and consts.param_bytes_after == 260 * 4
    assert all(r.wall_s >= 0 and r.drift is None for r in out.trace)
    assert fold.to_json()["pass"] == "fold-bn" and fold.to_json()["param_bytes_after"] == 1040
    again = fxpress.optimize(out, "dce")
    assert again.pipeline == "fold-bn,dce,fold-constants{max-growth=2.0},dce"
    assert len(out.trace) == 3  # the earlier result keeps its own history


# -- instruments ---------------------------------------------------------------


def test_print_ir_after(graph):
    stream = io.StringIO()
    out = fxpress.optimize(graph, "fold-bn,dce", instruments=[PrintIRAfter(stream)])
    text = stream.getvalue()
    assert text == f"// ----- IR after fold-bn -----\n{out}\n// ----- IR after dce -----\n{out}\n"
    only = io.StringIO()
    fxpress.optimize(graph, "fold-bn,dce", instruments=[PrintIRAfter(only, only_modified=True)])
    assert only.getvalue() == f"// ----- IR after fold-bn -----\n{out}\n"


def test_timing_table(graph):
    stream = io.StringIO()
    fxpress.optimize(graph, "fold-bn,dce", instruments=[Timing(stream)])
    header, fold, dce = stream.getvalue().splitlines()
    assert header.split() == ["pass", "ms", "ops", "param", "bytes", "modified"]
    assert fold.split()[0] == "fold-bn" and fold.split()[2:] == ["5->4", "1176->1040", "yes"]
    assert dce.split()[0] == "dce" and dce.split()[2:] == ["4->4", "1040->1040", "no"]
    float(fold.split()[1])


def test_dump_ir(graph, tmp_path):
    out = fxpress.optimize(graph, "fold-bn,dce", instruments=[DumpIR(tmp_path / "ir")])
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == ["00-input.txt", "01-fold-bn.txt", "02-dce.txt"]
    assert (tmp_path / "ir" / "00-input.txt").read_text() == str(graph) + "\n"
    assert (tmp_path / "ir" / "02-dce.txt").read_text() == str(out) + "\n"
    assert "batch_norm" in str(graph) and "batch_norm" not in (tmp_path / "ir" / "01-fold-bn.txt").read_text()


# -- debug mode ----------------------------------------------------------------


def test_debug_records_drift(graph, cnn_input):
    out = fxpress.optimize(graph, "fold-bn,scale-weights{factor=1.5},dce", debug=True)
    fold, scale, dce = out.trace
    assert fold.drift is not None and fold.drift < 1e-5
    expected = (
        (graph.copy()(cnn_input) - fxpress.optimize(graph, "fold-bn,scale-weights{factor=1.5}")(cnn_input)).abs().max()
    )
    assert scale.drift == pytest.approx(float(expected), rel=1e-4)
    assert scale.drift > 0.01
    assert dce.drift == 0.0
    assert all(r.drift is None for r in fxpress.optimize(graph, "fold-bn").trace)


# -- analyses ------------------------------------------------------------------


def test_analysis_cached_while_nothing_changes(graph):
    out = fxpress.optimize(graph, "use-analysis,use-analysis,dce,use-analysis")
    # computed once for the first two; dce modified the graph (it drops the unused
    # bn.num_batches_tracked) and does not preserve it, so it is computed again
    assert out.trace[2].modified is True
    assert LOG == ["compute", "use=5", "use=5", "compute", "use=5"]


def test_analysis_kept_after_an_unmodifying_pass(mlp, mlp_input):
    clean = fxpress.optimize(fxpress.capture(mlp, (mlp_input,)), "fold-bn")
    LOG.clear()
    out = fxpress.optimize(clean, "use-analysis,dce,fresh,use-analysis")
    assert [r.modified for r in out.trace[1:]] == [False, False, False, False]
    # kept after dce (modified=False); dropped when the pass returned a new graph object
    assert LOG == ["compute", "use=3", "compute", "use=3"]
    LOG.clear()
    fxpress.optimize(clean, "use-analysis,dce,use-analysis")
    assert LOG == ["compute", "use=3", "use=3"]


def test_analysis_dropped_after_a_modifying_pass_unless_preserved(graph):
    fxpress.optimize(graph, "use-analysis,scale-weights,use-analysis")
    assert LOG == ["compute", "use=5", "compute", "use=5"]
    LOG.clear()
    fxpress.optimize(graph, "use-analysis,scale-weights{keep=[count-ops]},use-analysis")
    assert LOG == ["compute", "use=5", "use=5"]


def test_analysis_manager_directly(graph):
    am = AnalysisManager(graph)
    assert am.get(CountOps) == 5 and am.get(CountOps) == 5
    assert am.get(Users)["x"] == 1
    assert am.computed == ["count-ops", "users"] and am.cached() == {"count-ops", "users"}
    am.invalidate(frozenset({"users"}))
    assert am.cached() == {"users"}
    am.get(CountOps)
    assert am.computed == ["count-ops", "users", "count-ops"]
    am.rebind(graph)  # same graph: cache kept
    assert am.cached() == {"count-ops", "users"}
    am.rebind(graph.copy())
    assert am.cached() == frozenset()


# -- errors --------------------------------------------------------------------


def test_pass_returning_something_else(graph):
    with pytest.raises(
        PassError, match=r"^in pass returns-none \(after \['dce'\]\): returned NoneType, not a PassResult$"
    ):
        fxpress.optimize(graph, "dce,returns-none")


def test_pass_raising_names_the_pass_and_the_passes_before_it(graph):
    with pytest.raises(PassError) as info:
        fxpress.optimize(fxpress.optimize(graph, "fold-bn"), "dce,boom")
    assert str(info.value) == "in pass boom (after ['fold-bn', 'dce']): RuntimeError: kaput"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert (info.value.pass_name, info.value.history, info.value.message) == (
        "boom",
        ("fold-bn", "dce"),
        "RuntimeError: kaput",
    )


def test_fxpress_error_inside_a_pass_keeps_its_type_and_fields(graph):
    with pytest.raises(VerifyError, match=r"^in pass boom-fx \(after \['dce'\]\): something is off$") as info:
        fxpress.optimize(graph, "dce,boom-fx")
    err = info.value
    assert (err.message, err.pass_name, err.history, err.after_pass) == ("something is off", "boom-fx", ("dce",), False)
    assert err.__cause__ is None  # the pass's own error, given context, not wrapped in another


def test_a_pass_error_carries_its_node_and_notes(graph):
    with pytest.raises(PassError) as info:
        fxpress.optimize(graph, "dce,node-error")
    err = info.value
    assert (err.node, err.pass_name, err.message) == ("relu", "node-error", "cannot take this relu")
    assert str(err) == "in pass node-error (after ['dce']): cannot take this relu\n  %1 = aten.relu(%0)\n  ^^^"


def test_context_is_recorded_once_the_innermost_pass_wins():
    err = PassError("bad").in_pass("inner", ["a"]).in_pass("outer", ["b"])
    assert (
        err.pass_name == "inner"
        and str(err) == "in pass inner (after ['a']): bad\n(while running pass outer after ['b'])"
    )


def test_verifier_runs_after_every_pass(graph):
    with pytest.raises(VerifyError) as info:
        fxpress.optimize(graph, "fold-bn,bad-annotation,dce")
    msg = str(info.value)
    assert msg.startswith(
        "after pass bad-annotation (ran before it: ['fold-bn']): annotation 'inconsistent' is inconsistent: rank must be 4"
    )
    assert "  %1 = aten.relu(%0) : f32[2,8,8,8]  # Inconsistent\n  ^^^" in msg
    assert "from " in msg and "torch.relu(self.bn(self.conv(x)))" in msg  # the model's source line
    assert isinstance(info.value, FxpressError)


def test_verifier_catches_shapes_that_no_longer_propagate(graph):
    with pytest.raises(VerifyError, match=r"^after pass break-shapes \(ran before it: \[\]\): shapes do not propagate"):
        fxpress.optimize(graph, "break-shapes")


def test_verifier_rejects_calls_backends_cannot_take(graph):
    with pytest.raises(VerifyError) as info:
        fxpress.optimize(graph, "python-call")
    msg = str(info.value)
    assert msg.startswith("after pass python-call (ran before it: []): call of <built-in method relu")
    assert "only ATen/fxpress operators may appear in the IR" in msg
    assert "\n  %2 = relu(%1) : f32[2,8,8,8]\n  ^^^" in msg


def test_a_graph_that_does_not_lint_fails_as_a_verify_error(graph):
    with pytest.raises(
        VerifyError, match=r"^after pass dangling-param \(ran before it: \['dce'\]\): graph does not lint: .*fc.missing"
    ):
        fxpress.optimize(graph, "dce,dangling-param")


def test_a_broken_graph_without_the_verifier_is_still_a_pass_error(graph):
    with pytest.raises(
        PassError, match=r"^after pass dangling-param \(ran before it: \[\]\): the graph is broken: .*fc.missing"
    ):
        fxpress.optimize(graph, "dangling-param", verify=False)


def test_verify_off_skips_the_annotation_checks(graph, monkeypatch):
    out = fxpress.optimize(graph, "bad-annotation", verify=False)
    assert "# Inconsistent" in str(out)
    monkeypatch.setenv("FXPRESS_VERIFY", "0")
    assert PassManager("dce").verify is False
    monkeypatch.setenv("FXPRESS_VERIFY", "1")
    assert PassManager("dce").verify is True


def test_errors_are_raised_before_instruments_see_a_broken_graph(graph, tmp_path):
    with pytest.raises(PipelineError):
        fxpress.optimize(graph, "dce,nope", instruments=[DumpIR(tmp_path / "ir")])
    assert not (tmp_path / "ir").exists()
