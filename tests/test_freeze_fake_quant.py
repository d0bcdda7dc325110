"""freeze-fake-quant: trained scales and zero points become QuantParams again; the ops and their tensors go."""

from __future__ import annotations

import pytest
import torch
from test_fake_quantize import _calibrated

import fxpress
from fxpress.errors import InputError, PipelineError
from fxpress.ir import annotations as notes
from fxpress.passes import FakeQuantize, FoldQDQ, FreezeFakeQuant
from fxpress.quant.annotations import QuantParams
from fxpress.quant.qat_graph import FAKE_QUANTIZE, freeze_fake_quant


def _qparams(graph: fxpress.Graph) -> dict[str, QuantParams]:
    return {n.name: p for n in graph.nodes() if isinstance(p := notes.get(n, QuantParams.key), QuantParams)}


def test_round_trip_without_training_gives_the_calibrated_graph_back():
    calibrated, x = _calibrated()
    frozen = fxpress.optimize(calibrated, [FakeQuantize(), FreezeFakeQuant()])
    assert str(frozen) == str(calibrated)  # same IR, same annotations, no leftover tensors
    assert _qparams(frozen) == _qparams(calibrated)
    assert frozen.trace[-1].stats == {"frozen": 4}
    assert {"observed", "calibrated", "qat-trained"} <= set(frozen.properties)
    assert "fake-quantized" not in frozen.properties
    assert torch.equal(fxpress.optimize(frozen, [FoldQDQ()])(x), fxpress.optimize(calibrated, [FoldQDQ()])(x))


def test_trained_values_are_written_back_as_the_op_used_them():
    """Scale clamped to float32 eps, the zero point rounded and clamped into the range: what the op computed with."""
    calibrated, x = _calibrated()
    fq = fxpress.optimize(calibrated, [FakeQuantize()])
    with torch.no_grad():
        fq.param("relu_fq_scale").fill_(0.0123)
        fq.param("x_fq_zero_point").fill_(7.6)
        fq.param("relu_fq_zero_point").fill_(-300.0)  # beyond qmin: clamped
        fq.param("fc_weight_fq_scale").copy_(torch.tensor([0.004, 0.002, -1.0]))  # a negative step: eps
    before = fq(x)
    frozen = fxpress.optimize(fq, [FreezeFakeQuant()])
    params = _qparams(frozen)
    assert params["relu"].scale.item() == pytest.approx(0.0123) and params["x"].zero_point.item() == 8
    assert params["relu"].zero_point.item() == -128
    assert params["fc_weight"].scale[2].item() == torch.finfo(torch.float32).eps
    assert params["relu"].scheme == _qparams(calibrated)["relu"].scheme
    assert params["linear"] == _qparams(calibrated)["linear"]  # not wrapped (float-out): as calibrated
    refolded = fxpress.optimize(frozen, [FakeQuantize(learn=False)])
    assert torch.equal(refolded(x), before)  # the frozen parameters reproduce the trained function exactly


def test_second_run_is_refused_by_its_requirement():
    calibrated, _ = _calibrated()
    frozen = fxpress.optimize(calibrated, [FakeQuantize(), FreezeFakeQuant()])
    with pytest.raises(PipelineError, match="freeze-fake-quant requires"):
        fxpress.optimize(frozen, [FreezeFakeQuant()])


def test_a_foreign_fake_quantize_op_without_a_scheme_is_refused():
    calibrated, _ = _calibrated()
    graph = calibrated.copy()
    (out,) = graph.output_node.args[0]
    scale = graph.add_param("s", torch.tensor([0.1]), before=graph.output_node)
    zero = graph.add_param("z", torch.tensor([0.0]), before=graph.output_node)
    with graph.fx.inserting_before(graph.output_node):
        fq = graph.fx.call_function(FAKE_QUANTIZE, (out, scale, zero, -128, 127, -1, 1.0))
    fq.meta["val"] = out.meta["val"]
    graph.output_node.args = ((fq,),)
    graph.recompile()
    with pytest.raises(InputError, match="not made by fake-quantize"):
        freeze_fake_quant(graph)


def test_leaves_other_unused_tensors_alone():
    calibrated, _ = _calibrated()
    graph = calibrated.copy()
    graph.gm.register_buffer("unrelated", torch.ones(2))
    fq = fxpress.optimize(graph, [FakeQuantize()])
    frozen = fxpress.optimize(fq, [FreezeFakeQuant()])
    assert hasattr(frozen.gm, "unrelated")
    assert not any("_fq_" in name for name, _ in frozen.gm.named_buffers())
    assert not any("_fq_" in name for name, _ in frozen.gm.named_parameters())
