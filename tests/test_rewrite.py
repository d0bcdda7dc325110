"""The greedy rewrite driver (fxpress/ir/rewrite.py): order, fixed point, clean-up, the guard."""

from __future__ import annotations

import pytest
import torch
import torch.fx

from fxpress.ir.rewrite import rewrite

aten = torch.ops.aten


def _neg_chain(length: int) -> tuple[torch.fx.Graph, torch.fx.Node]:
    """x -> neg -> neg -> ... (`length` negs) -> output."""
    fx = torch.fx.Graph()
    x = fx.placeholder("x")
    y = x
    for _ in range(length):
        y = fx.call_function(aten.neg.default, (y,))
    fx.output(y)
    return fx, x


def _targets(fx: torch.fx.Graph) -> list[object]:
    return [n.target for n in fx.nodes if n.op == "call_function"]


def double_neg(node: torch.fx.Node) -> torch.fx.Node | None:
    """neg(neg(a)) -> a."""
    inner = node.args[0] if node.target == aten.neg.default else None
    is_neg = isinstance(inner, torch.fx.Node) and inner.target == aten.neg.default
    return inner.args[0] if is_neg else None


def test_rules_run_to_a_fixed_point_and_unread_operands_go() -> None:
    fx, x = _neg_chain(5)
    # neg(neg(...)) cancels pairwise: 5 negs -> 1, in two rewrites; each erased neg takes the
    # inner neg it alone read along
    assert rewrite(fx, [double_neg]) == 2
    assert _targets(fx) == [aten.neg.default]
    assert next(iter(x.users)).target == aten.neg.default
    fx.lint()


def test_first_matching_rule_wins_and_new_nodes_are_tried_next() -> None:
    fx, x = _neg_chain(1)
    seen: list[str] = []

    def neg_to_abs_neg(node: torch.fx.Node) -> torch.fx.Node | None:
        """neg(a) -> abs(a) * -1, an op the next rule rewrites again."""
        if node.target != aten.neg.default:
            return None
        with node.graph.inserting_before(node):
            return node.graph.call_function(aten.mul.Tensor, (node.graph.call_function(aten.abs.default, (x,)), -1))

    def abs_to_relu(node: torch.fx.Node) -> torch.fx.Node | None:
        seen.append(str(node.target))
        if node.target != aten.abs.default:
            return None
        with node.graph.inserting_before(node):
            return node.graph.call_function(aten.relu.default, node.args)

    def never(node: torch.fx.Node) -> torch.fx.Node | None:
        assert double_neg(node) is None, "a later rule is not tried where an earlier one matched"
        return None

    assert rewrite(fx, [neg_to_abs_neg, abs_to_relu]) == 2
    assert _targets(fx) == [aten.relu.default, aten.mul.Tensor]
    assert seen[:2] == ["x", "aten.abs.default"]  # the new abs is visited right after the rewrite made it
    fx2, _ = _neg_chain(2)
    assert rewrite(fx2, [double_neg, never]) == 1


def test_no_match_leaves_the_graph_alone() -> None:
    fx, _ = _neg_chain(1)
    before = str(fx)
    assert rewrite(fx, [double_neg]) == 0
    assert str(fx) == before


def test_impure_operands_stay() -> None:
    fx = torch.fx.Graph()
    x = fx.placeholder("x")
    inplace = fx.call_function(aten.relu_.default, (x,))
    neg = fx.call_function(aten.neg.default, (inplace,))
    fx.output(fx.call_function(aten.neg.default, (neg,)))
    assert rewrite(fx, [double_neg]) == 1
    assert _targets(fx) == [aten.relu_.default]  # both negs gone, the in-place relu (now the output) kept


def test_rules_that_never_settle_hit_the_guard() -> None:
    fx, _ = _neg_chain(1)

    def renew(node: torch.fx.Node) -> torch.fx.Node | None:
        """neg(a) -> a fresh neg(a): matches its own output forever."""
        if node.target != aten.neg.default:
            return None
        with node.graph.inserting_before(node):
            return node.graph.call_function(aten.neg.default, node.args)

    with pytest.raises(RuntimeError, match=r"did not converge after 7 rewrites \(rules: renew; last at node"):
        rewrite(fx, [renew], max_rewrites=7)
    with pytest.raises(RuntimeError, match="did not converge after 130 rewrites"):  # 10 per node (3) + 100
        rewrite(_neg_chain(1)[0], [renew])


def test_a_replacement_must_not_read_the_node() -> None:
    fx, _ = _neg_chain(1)

    def wrap(node: torch.fx.Node) -> torch.fx.Node | None:
        if node.target != aten.neg.default:
            return None
        with node.graph.inserting_after(node):
            return node.graph.call_function(aten.relu.default, (node,))

    with pytest.raises(ValueError, match="must not be or read the node itself"):
        rewrite(fx, [wrap])
