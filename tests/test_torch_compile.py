"""``torch.compile(model, backend="fxpress")``: subgraphs compiled through fxpress, eager where they cannot be.

Numerics: fp32 within 1e-4 of eager (an MLP, a CNN at three batch sizes, a graph break, two inputs read in
another order than the signature's); int8 equal to the same pipeline run through `fxpress.capture` (the
graph dynamo hands over quantizes the same way) and near fp32. Fallback: an op TVM lacks, a model in
training mode, weights changed after compile: each runs eagerly with exactly one warning. Bad options (not
a pipeline, an unknown name, an unknown or foreign target, bad values, an inductor mode) are errors of the
first call, never a fallback.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch._dynamo.exc import BackendCompilerFailed

from fxpress.errors import PipelineError, TargetError
from fxpress.integrations.torch_compile import (
    CalibrationWarning,
    FallbackWarning,
    OptionError,
    fxpress_backend,
    parse_options,
    register,
)

FAST = {"num_threads": 1, "tuning": False}


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _run(model: nn.Module, *inputs: torch.Tensor, **options: Any) -> tuple[Any, list[warnings.WarningMessage]]:
    """The compiled model's output on `inputs` (the first call compiles), and the warnings fxpress gave."""
    compiled = torch.compile(model, backend="fxpress", options={**FAST, **options})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(*inputs)
    return out, [w for w in caught if issubclass(w.category, FallbackWarning | CalibrationWarning)]


def _inner(exc: pytest.ExceptionInfo[BackendCompilerFailed]) -> BaseException:
    return exc.value.inner_exception


class TwoInputs(nn.Module):
    """Reads its second argument first, so dynamo's placeholder order is not the signature's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 32)

    def forward(self, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) * scale


class Branchy(nn.Module):
    """A data-dependent branch: dynamo breaks the graph there, so there are several subgraphs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.a(x))
        if float(y.sum()) > 0:
            y = y * 2
        return self.b(y)


class Unsupported(nn.Module):
    """torch.special.i0: an op TVM's importer lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(self.fc(x))


# ---- registration and options (no TVM build) -------------------------------------------------------------


def test_the_backend_is_found_by_name() -> None:
    from torch._dynamo.backends.registry import lookup_backend

    assert "fxpress" in torch._dynamo.list_backends()
    assert lookup_backend("fxpress") is fxpress_backend
    register()  # by hand, where fxpress is not pip-installed: a no-op once the entry point registered it
    assert lookup_backend("fxpress") is fxpress_backend


def test_options_are_checked() -> None:
    opts = parse_options({"pipeline": "int8", "target": "eager", "num_threads": 2, "calibration": [torch.ones(2)]})
    assert [p.name for p in opts.passes] == ["fold-bn", "observe", "calibrate", "fold-qdq"]
    assert opts.target == "eager" and opts.num_threads == 2
    assert opts.calibration is not None and len(opts.calibration[0]) == 1  # a bare tensor is a one-input batch
    assert [p.name for p in parse_options(None).passes] == ["fold-bn", "fold-constants", "dce"]


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"pipeline": "fold-bn,no-such-pass"}, PipelineError, "not a valid pipeline"),
        ({"pipeline": "fold-bn{ratio=0.5}"}, PipelineError, "ratio"),
        ({"pipeline": "fold-qdq"}, PipelineError, "requires"),
        ({"pipeline": 3}, PipelineError, "pipeline text"),
        ({"pipline": "default"}, OptionError, "did you mean 'pipeline'"),
        ({"target": "x87"}, TargetError, "valid targets"),
        ({"target": "arm"}, TargetError, "another machine"),
        ({"num_threads": 0}, OptionError, "positive int"),
        ({"num_threads": True}, OptionError, "positive int"),
        ({"calibration": torch.ones(3)}, OptionError, "list of batches"),
        ({"calibration": [(torch.ones(2), "x")]}, OptionError, r"\[0\] holds a str"),
        ({"calibration": [3]}, OptionError, "must be a tuple of tensors"),
        ({"calibration": []}, OptionError, "empty"),
        ({"tuning": 1.5}, OptionError, "tuning"),
    ],
)
def test_bad_options_are_errors(options: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words) as exc:
        parse_options(options)
    assert "torch.compile(backend='fxpress')" in str(exc.value)


def test_options_not_a_dict() -> None:
    with pytest.raises(OptionError, match="must be a dict"):
        parse_options([("pipeline", "default")])  # type: ignore[arg-type]


def test_a_bad_pipeline_fails_the_first_call_not_a_fallback(mlp: nn.Module, mlp_input: torch.Tensor) -> None:
    compiled = torch.compile(mlp, backend="fxpress", options={"pipeline": "fold-bn,prune"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        with pytest.raises(BackendCompilerFailed, match="not a valid pipeline") as exc:
            compiled(mlp_input)
    assert isinstance(_inner(exc), PipelineError)


def test_an_unknown_option_fails_the_first_call(mlp: nn.Module, mlp_input: torch.Tensor) -> None:
    compiled = torch.compile(mlp, backend="fxpress", options={"targt": "x86"})
    with pytest.raises(BackendCompilerFailed, match="unknown option 'targt'") as exc:
        compiled(mlp_input)
    assert isinstance(_inner(exc), OptionError)


def test_an_inductor_mode_is_refused(mlp: nn.Module, mlp_input: torch.Tensor) -> None:
    with pytest.raises(BackendCompilerFailed, match="inductor setting") as exc:
        torch.compile(mlp, backend="fxpress", mode="max-autotune")(mlp_input)
    assert isinstance(_inner(exc), OptionError)


def test_training_mode_falls_back_once(mlp: nn.Module, mlp_input: torch.Tensor) -> None:
    model = mlp.train()
    reference = type(mlp)()
    reference.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="fxpress", options=FAST)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [compiled(mlp_input) for _ in range(3)]
    fallbacks = [w for w in caught if issubclass(w.category, FallbackWarning)]
    assert len(fallbacks) == 1 and "model.eval()" in str(fallbacks[0].message)
    reference.train()
    for out in outs:  # eager, BatchNorm statistics updated on every call as PyTorch does
        assert torch.allclose(out, reference(mlp_input), atol=1e-6)
    assert torch.allclose(model.bn.running_mean, reference.bn.running_mean)


def test_the_eager_target_runs_the_compressed_graph(cnn: nn.Module, cnn_input: torch.Tensor) -> None:
    out, caught = _run(cnn, cnn_input, target="eager")
    assert not caught
    assert not out.requires_grad  # the fxpress graph ran, not the model's own forward
    assert torch.allclose(out, cnn(cnn_input), atol=1e-5)


# ---- compiled through TVM --------------------------------------------------------------------------------


@pytest.mark.tvm
def test_mlp_fp32_matches_eager(mlp: nn.Module, mlp_input: torch.Tensor) -> None:
    out, caught = _run(mlp, mlp_input)
    assert not caught, [str(w.message) for w in caught]
    assert not out.requires_grad  # the compiled module ran (eager would carry the parameters' autograd)
    assert (out - mlp(mlp_input)).abs().max().item() <= 1e-4


@pytest.mark.tvm
def test_cnn_static_then_dynamic_batch(cnn: nn.Module) -> None:
    compiled = torch.compile(cnn, backend="fxpress", options=FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        for batch in (2, 3, 5):  # 2: static; 3: dynamo recompiles with a symbolic batch, which 5 reuses
            x = torch.randn(batch, 3, 8, 8)
            out = compiled(x)
            assert out.shape == (batch, 4) and not out.requires_grad
            assert (out - cnn(x)).abs().max().item() <= 1e-4


@pytest.mark.tvm
def test_a_dynamic_subgraph_gets_a_static_build_per_shape(cnn: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """fxpress's tile and panel kernels need static shapes: each new shape of a dynamic subgraph is compiled
    static from the one optimized graph, up to MAX_SPECIALIZED shapes; later shapes run the symbolic build."""
    from fxpress.integrations import torch_compile as tc

    made: list[tc.CompiledSubgraph] = []
    real_init = tc.CompiledSubgraph.__init__

    def spy(self: tc.CompiledSubgraph, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(tc.CompiledSubgraph, "__init__", spy)
    monkeypatch.setattr(tc, "MAX_SPECIALIZED", 2)
    compiled = torch.compile(cnn, backend="fxpress", options=FAST)
    for batch in (2, 3, 5, 7, 3):
        x = torch.randn(batch, 3, 8, 8)
        assert (compiled(x) - cnn(x)).abs().max().item() <= 1e-4
    static, dynamic = made  # batch 2 compiled static by dynamo; the rest one symbolic subgraph
    assert static.graph is None and not static.static
    assert sorted(dynamic.static) == [((3, 3, 8, 8),), ((5, 3, 8, 8),)]  # 7: past the limit, the symbolic build
    assert all(m is not dynamic.module for m in dynamic.static.values())


@pytest.mark.tvm
def test_inputs_map_by_name_not_placeholder_order() -> None:
    model = TwoInputs().eval()
    scale, x = torch.rand(4, 32), torch.randn(4, 16)
    batches = [(torch.rand(4, 32), torch.randn(4, 16)) for _ in range(3)]  # in forward's order: (scale, x)
    out, caught = _run(model, scale, x, pipeline="int8", calibration=batches)
    assert not caught, [str(w.message) for w in caught]  # the batches fit: no fallback to the first call's inputs
    assert (out - model(scale, x)).abs().max().item() <= 0.05
    by_name = [{"x": x, "scale": s} for s, x in batches]
    torch._dynamo.reset()
    out_named, caught = _run(model, scale, x, pipeline="int8", calibration=by_name)
    assert not caught and torch.equal(out_named, out)


@pytest.mark.tvm
def test_int8_equals_the_fxpress_pipeline(cnn: nn.Module, cnn_input: torch.Tensor) -> None:
    import fxpress
    from fxpress.passes import Calibrate

    batches = [(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
    out, caught = _run(cnn, cnn_input, pipeline="int8", calibration=batches)
    assert not caught, [str(w.message) for w in caught]
    passes = [*fxpress.passes.parse_pipeline("fold-bn,observe{per-channel=true}"), Calibrate(data=batches)]
    graph = fxpress.optimize(fxpress.capture(cnn, (cnn_input,)), [*passes, *fxpress.passes.parse_pipeline("fold-qdq")])
    direct = fxpress.compile(graph, "x86", num_threads=1, tuning=False)(cnn_input)
    assert torch.allclose(out, direct, atol=1e-5)
    assert (out - cnn(cnn_input)).abs().max().item() <= 0.05 * cnn(cnn_input).abs().max().item()


@pytest.mark.tvm
def test_int8_without_calibration_says_so(cnn: nn.Module, cnn_input: torch.Tensor) -> None:
    out, caught = _run(cnn, cnn_input, pipeline="int8")
    assert [w.category for w in caught] == [CalibrationWarning]
    assert "first call" in str(caught[0].message)
    assert out.shape == (2, 4)


@pytest.mark.tvm
def test_graph_break_compiles_each_subgraph() -> None:
    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.randn(4, 16)
    out, caught = _run(model, x)
    assert not caught, [str(w.message) for w in caught]
    assert not out.requires_grad
    assert (out - model(x)).abs().max().item() <= 1e-4


@pytest.mark.tvm
def test_unsupported_op_falls_back_with_one_warning() -> None:
    model = Unsupported().eval()
    compiled = torch.compile(model, backend="fxpress", options=FAST)
    x = torch.randn(2, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [compiled(x) for _ in range(3)]
    fallbacks = [w for w in caught if issubclass(w.category, FallbackWarning)]
    assert len(fallbacks) == 1
    assert "i0" in str(fallbacks[0].message) and "BackendError" in str(fallbacks[0].message)
    assert all(torch.equal(o, model(x)) for o in outs)


@pytest.mark.tvm
def test_changed_weights_run_eagerly_with_one_warning(mlp: nn.Module, mlp_input: torch.Tensor) -> None:
    compiled = torch.compile(mlp, backend="fxpress", options=FAST)
    with torch.no_grad():  # one grad mode throughout: a change of mode alone makes dynamo compile again
        compiled(mlp_input)
        mlp.fc2.weight.mul_(2.0)  # an optimizer step would do the same
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outs = [compiled(mlp_input) for _ in range(2)]
        expected = mlp(mlp_input)
    fallbacks = [w for w in caught if issubclass(w.category, FallbackWarning)]
    assert len(fallbacks) == 1 and "weights changed" in str(fallbacks[0].message)
    assert all(torch.allclose(o, expected, atol=1e-6) for o in outs)


# ---- the acceptance models (slow: real MiniLM weights, a ResNet-18-shaped net) ------------------------------


@pytest.mark.tvm
@pytest.mark.slow
def test_resnet18_fp32_matches_eager() -> None:
    from fxpress.models.resnet import example_input, resnet18

    model, x = resnet18(seed=0), example_input(1, 32, seed=1)
    with torch.inference_mode():
        out, caught = _run(model, x)
        assert not caught, [str(w.message) for w in caught]
        assert (out - model(x)).abs().max().item() <= 1e-4


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["default", "int8"])
def test_minilm_matches_eager(pipeline: str) -> None:
    pytest.importorskip("transformers")
    from fxpress.models.minilm import sentence_encoder, tokenize
    from fxpress.models.sentences import sentences

    model = sentence_encoder("eager")
    inputs = tokenize(sentences("eval")[:4], 32)
    calib = sentences("calib")
    batches = [tokenize(calib[i : i + 4], 32) for i in range(0, 32, 4)]  # (input_ids, attention_mask): forward's order
    with torch.inference_mode():
        out, caught = _run(model, *inputs, pipeline=pipeline, calibration=batches)
        reference = model(*inputs)
    assert not caught, [str(w.message) for w in caught]
    if pipeline == "default":
        assert (out - reference).abs().max().item() <= 1e-4
    else:  # static int8 of every linear and attention matmul: the sentence embeddings' cosine to fp32
        assert torch.nn.functional.cosine_similarity(out, reference).min().item() >= 0.98
