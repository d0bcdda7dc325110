"""Pipeline text: parse/print round trip, typed options, errors, order checks, properties."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import pytest
import torch

import fxpress
from fxpress.errors import PipelineError
from fxpress.ir.properties import Property
from fxpress.passes import (
    PASSES,
    PIPELINES,
    DeadCodeElimination,
    Distil,
    FineTune,
    FoldBatchNorm,
    FoldConstants,
    Observe,
    Pass,
    PassManager,
    PassRegistry,
    PassResult,
    parse_pipeline,
    print_pipeline,
)
from fxpress.passes import pipeline as text
from fxpress.passes.calibrate import Calibrate as CalibrateData

CALLS: list[str] = []


@dataclass(frozen=True)
class Options(Pass):
    """A test-only pass with one option of every supported type."""

    name = "options"
    flag: bool = False
    count: int = 1
    ratio: float = 0.5
    sizes: tuple[int, ...] = ()
    mode: str = "fast"
    limit: int | None = None

    def run(self, graph, am):
        return PassResult(graph, modified=False)


@dataclass(frozen=True)
class Record(Pass):
    """Records that it ran (module-level list: passes keep no state)."""

    name = "record"

    def run(self, graph, am):
        CALLS.append(self.name)
        return PassResult(graph, modified=False)


@dataclass(frozen=True)
class Calibrate(Record):
    name = "calibrate"
    establishes = frozenset({Property.CALIBRATED})


@dataclass(frozen=True)
class NeedsCalibration(Record):
    name = "needs-calibration"
    requires = frozenset({Property.CALIBRATED})


@dataclass(frozen=True)
class Prune(Record):
    name = "prune"
    invalidates = frozenset({Property.CALIBRATED})


@dataclass(frozen=True)
class NeedsBNFolded(Record):
    name = "needs-bn-folded"
    requires = frozenset({Property.BN_FOLDED})


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    for cls in (Options, Record, Calibrate, NeedsCalibration, Prune, NeedsBNFolded):
        monkeypatch.setitem(PASSES, cls.name, cls)
    CALLS.clear()


# -- round trip ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "fold-bn",
        "fold-bn,fold-constants{max-growth=2.5},dce",
        "options{flag=true,count=3,ratio=0.25,sizes=[1,2,3],mode=exact,limit=7}",
        "options{sizes=[4]},record,options{ratio=1e-05}",
        "",
    ],
)
def test_canonical_text_round_trips(text):
    passes = parse_pipeline(text)
    assert print_pipeline(passes) == text
    assert parse_pipeline(print_pipeline(passes)) == passes


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (" fold-bn , dce ", "fold-bn,dce"),
        ("fold-constants{ max_growth = 2 }", "fold-constants{max-growth=2.0}"),
        ("fold-constants{max-growth=1.0}", "fold-constants"),  # defaults are omitted
        ("fold-bn{}", "fold-bn"),
        ("options{limit=none,mode=fast,count=2}", "options{count=2}"),
        ("options{limit=3,flag=false,flag=true}", "options{flag=true,limit=3}"),  # declaration order, last wins
        ("options{sizes=[]}", "options"),
    ],
)
def test_print_gives_the_canonical_form(text, canonical):
    assert print_pipeline(parse_pipeline(text)) == canonical


def test_pass_objects_print_and_parse_back():
    passes = [
        FoldBatchNorm(),
        FoldConstants(max_growth=4.0),
        Options(flag=True, sizes=(8, 16), mode="slow"),
        DeadCodeElimination(),
    ]
    text = print_pipeline(passes)
    assert text == "fold-bn,fold-constants{max-growth=4.0},options{flag=true,sizes=[8,16],mode=slow},dce"
    assert parse_pipeline(text) == passes
    assert [p.text() for p in passes] == ["fold-bn", "fold-constants{max-growth=4.0}", passes[2].text(), "dce"]


def test_python_only_options_are_dropped_from_printed_text(mlp, mlp_input, monkeypatch):
    """Calibration data, training data and teachers cannot be text: printing drops them, so the text parses back."""
    monkeypatch.setitem(PASSES, "calibrate", CalibrateData)  # the real one, not this file's stand-in
    batches = [(mlp_input,)]
    labelled = [(mlp_input, torch.zeros(mlp_input.shape[0], dtype=torch.long))]
    passes = [
        Observe(per_channel=True),
        CalibrateData(data=batches, limit=1),
        FineTune(data=labelled, lr=0.01),
        Distil(teacher=mlp, data=labelled),
    ]
    want = "observe{per-channel=true},calibrate{limit=1},fine-tune{lr=0.01},distil"
    assert print_pipeline(passes) == want == PassManager(passes).pipeline
    parsed = parse_pipeline(want)
    assert parsed == passes  # data and teachers take no part in equality
    assert all(getattr(p, "data", None) is None for p in parsed)  # and the text gave none back: no marker
    assert print_pipeline(parsed) == want
    # what the manager records for the artifact is the same data-free text, the data's use in the stats
    out = fxpress.optimize(fxpress.capture(mlp, (mlp_input,)), passes[:2])
    assert out.pipeline == "observe{per-channel=true},calibrate{limit=1}"
    assert out.trace[-1].stats["batches"] == 1
    # text without Python-only options prints as before (nothing to drop: unchanged)
    assert print_pipeline(parse_pipeline("fold-bn,dce")) == "fold-bn,dce"


def test_options_are_typed():
    (p,) = parse_pipeline("options{flag=true,count=-4,ratio=3,sizes=[1, 2],mode=exact,limit=9}")
    assert p == Options(flag=True, count=-4, ratio=3.0, sizes=(1, 2), mode="exact", limit=9)
    assert type(p.flag) is bool and type(p.count) is int and type(p.ratio) is float
    assert type(p.sizes) is tuple and all(type(s) is int for s in p.sizes)
    assert parse_pipeline("options{limit=none}") == [Options(limit=None)]


def test_options_typed_when_annotations_are_real_types(monkeypatch):
    # a pass module without `from __future__ import annotations`: field types are objects, not strings
    fields = [
        ("flag", bool, dataclasses.field(default=False)),
        ("count", int, dataclasses.field(default=1)),
        ("ratio", float, dataclasses.field(default=0.5)),
        ("sizes", tuple[int, ...], dataclasses.field(default=())),
        ("limit", int | None, dataclasses.field(default=None)),
    ]
    cls = dataclasses.make_dataclass("Eager", fields, bases=(Pass,), frozen=True, namespace={"name": "eager-opts"})
    monkeypatch.setitem(PASSES, "eager-opts", cls)
    (p,) = parse_pipeline("eager-opts{flag=true,count=2,ratio=1,sizes=[3],limit=4}")
    assert (p.flag, p.count, p.ratio, p.sizes, p.limit) == (True, 2, 1.0, (3,), 4)
    assert type(p.ratio) is float
    with pytest.raises(PipelineError, match="option 'count' takes a int, got 'x'"):
        parse_pipeline("eager-opts{count=x}")


def test_the_parser_takes_its_registry():
    registry = PassRegistry({"record": Record, "options": Options}, {"both": "record,options{count=2}"})
    assert text.parse_pipeline("both", registry) == [Record(), Options(count=2)]
    with pytest.raises(
        PipelineError, match=r"unknown pass 'fold-bn'; valid passes: options, record; named pipelines: both"
    ):
        text.parse_pipeline("fold-bn", registry)
    assert parse_pipeline("fold-bn") == [FoldBatchNorm()]  # fxpress.passes.parse_pipeline: fxpress's registry
    assert parse_pipeline("record", registry) == [Record()]


def test_option_types_are_real_types_under_string_annotations():
    assert text.option_types(Options) == {
        "flag": bool,
        "count": int,
        "ratio": float,
        "sizes": tuple[int, ...],
        "mode": str,
        "limit": int | None,
    }


def test_int8_is_a_named_pipeline():
    assert print_pipeline(parse_pipeline("int8")) == "fold-bn,observe{per-channel=true},calibrate,fold-qdq"


def test_named_pipeline_expands():
    assert PIPELINES["default"] == "fold-bn,fold-constants,dce"
    assert parse_pipeline("default") == [FoldBatchNorm(), FoldConstants(), DeadCodeElimination()]
    assert print_pipeline(parse_pipeline("record,default,record")) == "record,fold-bn,fold-constants,dce,record"


def test_named_pipeline_takes_no_options():
    with pytest.raises(PipelineError) as info:
        parse_pipeline("default{max-growth=2}")
    assert str(info.value) == (
        "named pipeline 'default' takes no options; write out its passes (fold-bn,fold-constants,dce) to set theirs"
    )


def test_named_pipeline_that_expands_into_itself(monkeypatch):
    monkeypatch.setitem(PIPELINES, "loop", "record,loop")
    with pytest.raises(PipelineError, match="named pipeline 'loop' expands into itself"):
        parse_pipeline("loop")


def test_optimize_accepts_text_objects_and_mixtures(mlp, mlp_input):
    graph = fxpress.capture(mlp, (mlp_input,))
    by_text = fxpress.optimize(graph, "fold-bn,dce")
    by_objects = fxpress.optimize(graph, [FoldBatchNorm(), DeadCodeElimination()])
    mixed = fxpress.optimize(graph, ["fold-bn", DeadCodeElimination()])
    single = fxpress.optimize(fxpress.optimize(graph, FoldBatchNorm()), "dce")
    assert by_text.pipeline == by_objects.pipeline == mixed.pipeline == single.pipeline == "fold-bn,dce"
    assert str(by_text) == str(by_objects) == str(mixed) == str(single)


# -- errors --------------------------------------------------------------------


def test_unknown_pass_lists_valid_names():
    with pytest.raises(PipelineError) as info:
        parse_pipeline("fold-bn,fold-bm")
    msg = str(info.value)
    assert "unknown pass 'fold-bm'" in msg
    assert "did you mean 'fold-bn'?" in msg
    assert "valid passes: " in msg and "named pipelines: default" in msg
    for name in PASSES:
        assert name in msg


def test_unknown_option_lists_valid_options():
    with pytest.raises(PipelineError) as info:
        parse_pipeline("fold-constants{max-grow=2}")
    msg = str(info.value)
    assert msg.startswith("fold-constants: unknown option 'max-grow'")
    assert "valid options: max-growth" in msg
    with pytest.raises(PipelineError, match=r"fold-bn: unknown option 'ratio'; valid options: \(none\)"):
        parse_pipeline("fold-bn{ratio=1}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fold-constants{max-growth=lots}", "fold-constants: option 'max-growth' takes a float, got 'lots'"),
        ("options{flag=yes}", "options: option 'flag' takes a bool, got 'yes'"),
        ("options{count=1.5}", "options: option 'count' takes a int, got '1.5'"),
        ("options{sizes=[1,x]}", "options: option 'sizes' takes a int, got 'x'"),
        ("options{limit=lots}", "options: option 'limit' takes a int, got 'lots'"),
        ("fold-constants{max-growth=0}", "fold-constants: max-growth must be > 0, got 0.0"),
        ("options{count}", "options: option 'count' must be written key=value"),
    ],
)
def test_bad_option_value_names_the_option(text, message):
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fold-bn{", "unclosed brace or bracket"),
        ("fold-constants{max-growth=2", "unclosed brace or bracket"),
        ("fold-bn}", "unbalanced '}'"),
        ("options{sizes=[1,2}", "unclosed brace or bracket"),
        ("fold-bn,,dce", "empty item"),
        ("fold-bn,", "empty item"),
        (",dce", "empty item"),
        ("Fold_BN", "is not a pass name"),
        ("fold-bn{}dce", "is not a pass name"),
        ("{max-growth=2}", "is not a pass name"),
    ],
)
def test_malformed_text(text, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        parse_pipeline(text)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (FoldBatchNorm, "got the class FoldBatchNorm, not a pass object: write FoldBatchNorm()"),
        ([DeadCodeElimination(), FoldBatchNorm], "pipeline item 1 is the class FoldBatchNorm"),
        (["dce", 3], "pipeline item 1 is a int: give pass objects or pipeline text"),
    ],
)
def test_not_passes(bad, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        fxpress.PassManager(bad)


def test_pipeline_text_must_be_a_string():
    with pytest.raises(PipelineError, match="pipeline text must be a str, got bytes"):
        parse_pipeline(b"fold-bn")


# -- order ---------------------------------------------------------------------


def test_order_violation_is_reported_before_anything_runs(mlp, mlp_input):
    graph = fxpress.capture(mlp, (mlp_input,))
    with pytest.raises(PipelineError) as info:
        fxpress.optimize(graph, "record,needs-calibration")
    assert str(info.value) == (
        "needs-calibration requires ['calibrated']; ran so far: ['record']; run calibrate before it"
    )
    assert CALLS == []  # the preceding pass never ran
    assert graph.trace == []


def test_order_check_counts_passes_of_earlier_optimize_calls(mlp, mlp_input):
    graph = fxpress.optimize(fxpress.capture(mlp, (mlp_input,)), "dce,record")
    CALLS.clear()
    with pytest.raises(
        PipelineError, match=r"^needs-calibration requires \['calibrated'\]; ran so far: \['dce', 'record', 'record'\]"
    ):
        fxpress.optimize(graph, "record,needs-calibration")
    assert CALLS == []


def test_an_invalidated_requirement_names_the_pass_that_invalidated_it(mlp, mlp_input):
    graph = fxpress.capture(mlp, (mlp_input,))
    with pytest.raises(PipelineError) as info:
        fxpress.optimize(graph, "calibrate,prune,record,needs-calibration")
    assert str(info.value) == (
        "needs-calibration requires ['calibrated']; ran so far: ['calibrate', 'prune', 'record']; "
        "run calibrate before it ('calibrated' was invalidated by prune)"
    )


def test_order_satisfied_and_invalidated(mlp, mlp_input):
    graph = fxpress.capture(mlp, (mlp_input,))
    out = fxpress.optimize(graph, "calibrate,record,needs-calibration")
    assert CALLS == ["calibrate", "record", "needs-calibration"]
    assert "calibrated" in out.properties
    CALLS.clear()
    with pytest.raises(PipelineError, match=r"ran so far: \['calibrate', 'prune'\]"):
        fxpress.optimize(graph, "calibrate,prune,needs-calibration")
    assert CALLS == []


def test_properties_persist_across_optimize_calls(mlp, mlp_input):
    graph = fxpress.capture(mlp, (mlp_input,))
    with pytest.raises(
        PipelineError, match=r"needs-bn-folded requires \['bn-folded'\]; ran so far: \[\]; run fold-bn before it"
    ):
        fxpress.optimize(graph, "needs-bn-folded")
    folded = fxpress.optimize(graph, "fold-bn")
    assert folded.properties == frozenset({"bn-folded"})
    assert graph.properties == frozenset()  # the input graph is not changed
    later = fxpress.optimize(folded, "dce")
    assert later.properties == frozenset({"bn-folded"})
    assert later.copy().properties == frozenset({"bn-folded"})
    fxpress.optimize(later, "needs-bn-folded")  # no error: the fact survived two calls
    assert CALLS == ["needs-bn-folded"]
    calibrated = fxpress.optimize(later, "calibrate")
    assert fxpress.optimize(calibrated, "prune").properties == frozenset({"bn-folded"})


def test_a_float_weight_pass_after_quantization_names_the_pass_to_move():
    from fxpress.passes.pipeline import check_order
    from fxpress.passes.registry import REGISTRY

    passes = parse_pipeline("observe,calibrate,fold-qdq,low-rank")
    with pytest.raises(
        PipelineError,
        match=r"low-rank cannot run on a graph that is \['quantized'\] \(made by fold-qdq\); run low-rank before fold-qdq",
    ):
        check_order(passes, frozenset(), REGISTRY)
    passes = parse_pipeline("observe,calibrate,fake-quantize,sparsify")
    with pytest.raises(PipelineError, match=r"sparsify cannot run on a graph that is \['fake-quantized'\]"):
        check_order(passes, frozenset(), REGISTRY)
    with pytest.raises(PipelineError, match=r"\['quantized'\] \(it came that way\); run fine-tune on the float graph"):
        check_order(parse_pipeline("fine-tune"), frozenset({"quantized"}), REGISTRY)
    check_order(parse_pipeline("low-rank,sparsify,observe,calibrate,fake-quantize,fine-tune"), frozenset(), REGISTRY)
