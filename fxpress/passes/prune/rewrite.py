"""Apply a `PrunePlan` to a graph: slice parameters, rewrite shape constants.

Every node whose output carries a pruned channel dim gets its new size from the
analysis (`pruned_shape`), so each rewrite is local:

    %w = param f32[16,8,3,3]                 -> f32[8,4,3,3] (rows and columns kept)
    aten.view(%x, [2, 16, 12, 32])           -> aten.view(%x, [2, 16, 6, 32])
    aten.slice.Tensor(%x, 1, 8, 16)          -> aten.slice.Tensor(%x, 1, 4, 8)
    aten.chunk(%x, 2, 1)                     -> aten.split_with_sizes(%x, [3, 5], 1)
    aten.conv2d(..., groups=8)               -> aten.conv2d(..., groups=4)
    aten.layer_norm(%x, [384], ...)          -> aten.layer_norm(%x, [192], ...)

Parameters keep their names (the graph is the pass manager's private copy) and
get a `ChannelsPruned` annotation with their original shape. The annotations
of a sliced weight are kept true: its `Sparsity` is measured again (the pattern
where it still holds, else unstructured), and a `SharedWeights` it no longer
follows (hash sharing: the hash is over positions) is dropped; observer slots
and quantization parameters go from the whole graph with the ``observed`` and
``calibrated`` the pass invalidates (counted in ``stats["unobserved"]``). After the rewrite
the shapes are propagated again and every pruned dim is checked against the
size the analysis predicted: a mismatch is a `PassError`, never a silently
wrong model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx

from fxpress.errors import PassError
from fxpress.ir import annotations as notes
from fxpress.ir.annotations import annotate, get
from fxpress.ir.opsets import CONV, bind
from fxpress.ir.printer import locate, op_name
from fxpress.passes.prune.errors import PruneError
from fxpress.passes.prune.groups import ChannelGroups
from fxpress.passes.prune.ops import BF16, arg_index, aten
from fxpress.passes.prune.plan import ChannelsPruned, PrunePlan, site_kept
from fxpress.quant.annotations import drop_quant_annotations
from fxpress.sharing.annotations import drop_broken_sharing
from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.pattern import block_density, element_density, nm_holds, parse_pattern

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

Kept = dict[int, np.ndarray]  # tensor dim -> kept indices (only dims that shrink)


def _kept(groups: ChannelGroups, name: str, output: int, plan: PrunePlan) -> Kept:
    out: Kept = {}
    for site in groups.sites.get((name, output), []):
        for axis, (d, kept) in enumerate(zip(site.dims, site_kept(site, plan), strict=True)):
            if len(kept) != site.group.shape[axis]:
                out[d] = kept
    return out


def _set(node: torch.fx.Node, name: str, value: Any) -> None:
    i = arg_index(node.target, name)
    if i < len(node.args):
        args = list(node.args)
        args[i] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: value}


def _slice_params(graph: Graph, groups: ChannelGroups, plan: PrunePlan) -> tuple[int, int]:
    """Slice every parameter with pruned channels; (parameters sliced, hash-shared weights whose sharing broke)."""
    sliced = unshared = 0
    for node in graph.nodes("get_attr"):
        kept = _kept(groups, node.name, 0, plan)
        if not kept:
            continue
        tensor = graph.param(node)
        note = get(node, ChannelsPruned.key)
        original = note.original if isinstance(note, ChannelsPruned) else tuple(int(d) for d in tensor.shape)
        for d, idx in sorted(kept.items()):
            tensor = tensor.index_select(d, torch.as_tensor(idx, dtype=torch.long))
        graph.replace_param(node, tensor)
        annotate(node, ChannelsPruned(original))
        _resparsify(node, tensor)
        unshared += drop_broken_sharing(node, tensor)
        sliced += 1
    return sliced, unshared


def _resparsify(node: torch.fx.Node, weight: torch.Tensor) -> None:
    """Measure a sliced weight's `Sparsity` again: its pattern where it still holds, else unstructured, else none.

    Slicing keeps every zero but may cut through blocks (16 rows of a 16x1
    block, 4 of them removed) or N:M groups (input columns removed): the
    annotation keeps its pattern only while the block divides the new shape
    (or N:M still holds), and otherwise records the zeros as unstructured; a
    weight left with no zero loses the annotation.
    """
    note = get(node, Sparsity.key)
    if not isinstance(note, Sparsity):
        return
    del notes.annotations(node)[Sparsity.key]
    pattern = parse_pattern(note.pattern)
    if nm_holds(weight, pattern) if pattern.is_nm else block_density(weight, pattern.block) is not None:
        annotate(node, Sparsity.of(weight, pattern))
    elif element_density(weight) < 1.0:
        annotate(node, Sparsity.of(weight, parse_pattern("unstructured")))


def _size(graph: Graph, node: torch.fx.Node, old: Any, new: int) -> Any:
    if isinstance(old, int):
        return old if old == -1 else new
    raise PruneError(
        f"cannot prune: the size of a pruned dim is computed at run time (dynamic) here:\n{locate(graph, node)}"
    )


def _new_sizes(graph: Graph, node: torch.fx.Node, sizes: list[Any], first: int, out: Kept) -> list[Any]:
    return [_size(graph, node, s, len(out[first + i])) if first + i in out else s for i, s in enumerate(sizes)]


def _position(kept: np.ndarray, index: int, size: int) -> int:
    """Where original index `index` (a slice bound) lands once only `kept` remain."""
    index = max(0, min(size, index + size if index < 0 else index))
    return int(np.searchsorted(kept, index))


def _rewrite(graph: Graph, groups: ChannelGroups, plan: PrunePlan, node: torch.fx.Node) -> bool:
    packet = node.target.overloadpacket  # type: ignore[union-attr]
    b = bind(node.target, node.args, node.kwargs)
    x = b.get("self", b.get("input"))
    x_kept = _kept(groups, x.name, 0, plan) if isinstance(x, torch.fx.Node) else {}
    out = _kept(groups, node.name, 0, plan)
    shape = groups.shapes.get(x.name) if isinstance(x, torch.fx.Node) else None
    if packet in (aten.view, aten.reshape, aten._unsafe_view, aten.expand) and out:
        key = "size" if "size" in b else "shape"
        _set(node, key, _new_sizes(graph, node, list(b[key]), 0, out))
    elif packet is aten.unflatten and out:
        dim = b["dim"] % len(shape)  # type: ignore[arg-type]
        _set(node, "sizes", _new_sizes(graph, node, list(b["sizes"]), dim, out))
    elif packet in (aten.slice, aten.narrow, aten.select) and x_kept:
        dim = b["dim"] % len(shape)  # type: ignore[arg-type]
        if dim not in x_kept:
            return False
        kept, size = x_kept[dim], shape[dim]  # type: ignore[index]
        if packet is aten.slice:
            if b.get("step", 1) != 1:
                raise PassError("a strided slice over pruned channels", node=node.name, notes=[locate(graph, node)])
            end = size if b.get("end") is None else b["end"]
            _set(node, "start", _position(kept, b.get("start") or 0, size))
            _set(node, "end", _position(kept, end, size))
        elif packet is aten.narrow:
            start = _position(kept, b["start"], size)
            _set(node, "length", _position(kept, b["start"] + b["length"], size) - start)
            _set(node, "start", start)
        else:
            index = b["index"] + size if b["index"] < 0 else b["index"]
            if index not in kept:
                raise PassError(
                    "prune-channels would remove the channel this op selects",
                    node=node.name,
                    notes=[locate(graph, node)],
                )
            _set(node, "index", int(np.searchsorted(kept, index)))
    elif packet in (aten.split, aten.split_with_sizes, aten.chunk) and x_kept:
        dim = b["dim"] % len(shape)  # type: ignore[arg-type]
        if dim not in x_kept:
            return False
        pieces = groups.shapes[node.name]
        sizes = [len(_kept(groups, node.name, j, plan).get(dim, range(p[dim]))) for j, p in enumerate(pieces)]
        node.target = aten.split_with_sizes.default
        node.args, node.kwargs = (x, sizes, dim), {}
    elif (packet in CONV or packet in BF16) and b.get("groups", 1) != 1 and out:
        c = 1 if len(groups.shapes[node.name]) == len(groups.shapes[b["weight"].name]) else 0
        if c in out:
            old = groups.shapes[node.name][c]
            _set(node, "groups", b["groups"] * len(out[c]) // old)
    elif packet is aten.group_norm and x_kept.get(1) is not None:
        _set(node, "num_groups", b["num_groups"] * len(x_kept[1]) // shape[1])  # type: ignore[index]
    elif packet is aten.layer_norm and x_kept:
        k = len(b["normalized_shape"])
        first = len(shape) - k  # type: ignore[arg-type]
        _set(node, "normalized_shape", _new_sizes(graph, node, list(b["normalized_shape"]), first, x_kept))
    else:
        return False
    return True


def _check_shapes(graph: Graph, groups: ChannelGroups, plan: PrunePlan) -> None:
    for node in graph.nodes():
        val = node.meta.get("val")
        vals = val if isinstance(val, list | tuple) else [val]
        for j, v in enumerate(vals):
            if not isinstance(v, torch.Tensor):
                continue
            for d, kept in _kept(groups, node.name, j, plan).items():
                if v.shape[d] != len(kept):
                    raise PassError(
                        f"dim {d} of this op is {v.shape[d]} after pruning, the channel analysis "
                        f"expected {len(kept)} ({op_name(node.target)}); a bug in the analysis of this op",
                        node=node.name,
                        notes=[locate(graph, node)],
                    )


def apply_plan(graph: Graph, groups: ChannelGroups, plan: PrunePlan) -> dict[str, int]:
    """Prune `graph` in place following `plan`; returns counts for the pass's stats."""
    sliced, unshared = _slice_params(graph, groups, plan)
    unobserved = drop_quant_annotations(graph.nodes())  # 'observed' and 'calibrated' go: what they stand for too
    ops = [n for n in graph.nodes("call_function") if isinstance(n.target, torch._ops.OpOverload) and n.args]
    rewritten = sum(_rewrite(graph, groups, plan, n) for n in ops)
    try:
        graph.propagate_shapes()
    except Exception as exc:
        raise PassError(f"prune-channels left a graph whose shapes do not propagate: {exc}") from exc
    _check_shapes(graph, groups, plan)
    stats = {
        "groups": sum(1 for r in plan.removed.values() if len(r)),
        "units": int(sum(len(r) for r in plan.removed.values())),
        "params": sliced,
        "ops": rewritten,
    }
    extra = {"unshared": unshared, "unobserved": unobserved}
    return stats | {k: v for k, v in extra.items() if v}
