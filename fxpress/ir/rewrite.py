"""A greedy rewrite driver: small local rules applied to an fx graph until none matches.

A *rule* is a function ``node -> replacement | None``. It looks at one node
(and what it reads) and either declines, returning None and changing nothing,
or builds the nodes that compute the same value, inserted before `node` or
before one of its operands, and returns the one that takes `node`'s place
(which must not read `node` itself). A rule says what it rewrites in one line
of algebra, ``q(dq(t, s, z), s, z) -> t``, and does nothing else; the driver
owns the rest, so every rule set gets the same order, clean-up and guard:

- **replacing**: every use of the node is redirected to the replacement, the
  node is erased, and so is each operand it read that nothing reads any more
  (one level, pure ``call_function`` nodes only: a rule that moves an op
  leaves no dead copy of it behind for the other rules to trip on);
- **order**: sweeps walk the graph in node order and try the rules at each
  node in the order given; the first match wins. After a rewrite a sweep goes
  on from the first node it has not visited yet, in graph order, so the nodes
  a rewrite has just made are tried next and a chain of rewrites (a quantize
  hoisted through several views) completes before the sweep moves on;
- **fixed point**: sweeps repeat until one rewrites nothing. Rules that must
  not compete (one that is only right once another has finished everywhere)
  are run by separate calls, in order;
- **guard**: more than `max_rewrites` rewrites raises RuntimeError: two rules
  that undo each other, or one that matches its own output, would otherwise
  loop forever. That is a bug in the rules, not in the user's model.

Used by fold-qdq's clean-up rules (`fxpress.passes.qdq_rules`) and the TVM
backend's channels-last rewrite (`fxpress.backends.tvm.channels_last`); it
lives in the IR layer so that passes and backends can share it. The shape is
MLIR's greedy pattern rewrite driver, cut down to what fx graphs need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.fx

Rule = Callable[[torch.fx.Node], torch.fx.Node | None]


def rewrite(graph: torch.fx.Graph, rules: Sequence[Rule], *, max_rewrites: int | None = None) -> int:
    """Apply `rules` to `graph` in place until none matches; how many rewrites were made (see the module doc).

    `max_rewrites` defaults to ten per node of `graph` as it comes in, plus a
    hundred: far more than any rule set here needs.
    """
    limit = 10 * len(graph.nodes) + 100 if max_rewrites is None else max_rewrites
    done = 0
    while True:
        before = done
        visited: set[torch.fx.Node] = set()
        while (match := _next_match(graph, rules, visited)) is not None:
            node, replacement = match
            done += 1
            if done > limit:
                names = ", ".join(getattr(r, "__name__", repr(r)) for r in rules)
                raise RuntimeError(
                    f"rewrite did not converge after {limit} rewrites (rules: {names}; last at node "
                    f"{node.name!r}): a rule undoes another or matches its own output"
                )
            _replace(graph, node, replacement)
        if done == before:
            return done


def _next_match(
    graph: torch.fx.Graph, rules: Sequence[Rule], visited: set[torch.fx.Node]
) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """The first node not yet visited in this sweep that a rule rewrites, and its replacement."""
    for node in graph.nodes:
        if node in visited:
            continue
        visited.add(node)
        for rule in rules:
            replacement = rule(node)
            if replacement is not None:
                return node, replacement
    return None


def _replace(graph: torch.fx.Graph, node: torch.fx.Node, replacement: torch.fx.Node) -> None:
    """`replacement` takes `node`'s place; `node` and the operands only it read are erased."""
    if replacement is node or node in replacement.all_input_nodes:
        raise ValueError(f"a rewrite rule's replacement for {node.name!r} must not be or read the node itself")
    operands = node.all_input_nodes
    node.replace_all_uses_with(replacement)
    graph.erase_node(node)
    for operand in operands:
        unread = operand is not replacement and not operand.users
        if unread and operand.op == "call_function" and not operand.is_impure():
            graph.erase_node(operand)
