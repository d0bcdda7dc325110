"""The walk that couples channel atoms, op by op, over a captured graph.

`Propagator` is a `torch.fx.Interpreter`: it runs the graph on its example
inputs (so every shape and every size argument is concrete, even in a graph
captured with a dynamic batch) and, after each node, computes the node's
channel `Site`s from its operands' (see `fxpress.passes.prune.ops` for the
three kinds of ops). Then, once the walk is over:

- graph outputs freeze their channels (the output shape must not change);
- every *joint* site (a channel dimension split over several tensor dims by a
  reshape, e.g. heads ``[.., 12, 32]``) is made rectangular: its units become
  slabs along one axis (an axis whose slabs are already single units, else the
  largest), so any set of pruned units leaves a dense ``[.., h', 32]`` tensor.
  A matmul that contracts the head dim has already unioned each head, so heads
  win over head-dim slices; an axis picked by ``select`` is unioned likewise.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx

from fxpress.ir.graph import Graph
from fxpress.ir.opsets import bind
from fxpress.ir.printer import op_name
from fxpress.passes.prune.atoms import AtomTable, Blocker, Site
from fxpress.passes.prune.ops import IDENTITY, MOVEMENT, Spec, aten, self_or_input, spec_for

_NO_EFFECT = {aten._assert_tensor_metadata, aten.sym_size, aten.sym_numel, aten.sym_stride, aten._assert_async}
_LIKE = {aten.zeros_like, aten.ones_like, aten.empty_like, aten.full_like, aten.rand_like, aten.randn_like}


@dataclass
class _Entry:
    """One operand site of a `Spec`: which input, the site, the labels of its dims."""

    k: int
    arg: torch.fx.Node
    site: Site
    labels: tuple[str, ...]
    dead: bool = False


def _shape(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(int(d) for d in value.shape)
    if isinstance(value, list | tuple) and any(isinstance(v, torch.Tensor) for v in value):
        return [tuple(int(d) for d in v.shape) if isinstance(v, torch.Tensor) else None for v in value]
    return None


def _encode(shape: tuple[int, ...], site: Site) -> torch.Tensor:
    """A tensor of `shape` holding atom id + 1 at each index (0: no atom)."""
    view = [1] * len(shape)
    for d in site.dims:
        view[d] = shape[d]
    return torch.from_numpy(site.atoms + 1).reshape(view).expand(shape).contiguous()


def _decode(value: Any) -> Site | None:
    """The site a movement op left in an encoded output: the dims atoms vary along."""
    if not isinstance(value, torch.Tensor) or value.numel() == 0:
        return None
    t = value.to(torch.int64) - 1
    dims = tuple(d for d in range(t.dim()) if t.shape[d] > 1 and bool((t != t.narrow(d, 0, 1)).any()))
    index = tuple(slice(None) if d in dims else 0 for d in range(t.dim()))
    return Site(dims, t[index].numpy().copy())


class Propagator(torch.fx.Interpreter):
    """Runs a `Graph` and couples the channel atoms of every node (see module docstring)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph.gm)
        self.source = graph
        self.atoms = AtomTable()
        self.sites: dict[torch.fx.Node, Any] = {}  # list[Site], or list[list[Site]] for tuple outputs
        self.shapes: dict[torch.fx.Node, Any] = {}
        self.const: dict[torch.fx.Node, bool] = {}
        self.joint: list[tuple[torch.fx.Node, Site]] = []
        self.blockers: list[Blocker] = []
        self._param_atoms: dict[tuple[int, tuple[int, ...]], list[Site]] = {}

    # -- the walk --------------------------------------------------------------
    def propagate(self) -> Propagator:
        with torch.no_grad():
            self.run(*self.source.example_inputs)
        self._rectangular()
        return self

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = _shape(result)
        if n.op == "output":
            self._protect_outputs(n)
            return result
        self.const[n] = n.op == "get_attr" or (
            n.op == "call_function" and all(self.const.get(a, False) for a in n.all_input_nodes)
        )
        if n.op == "get_attr":
            self.sites[n] = self._param_sites(result)
        elif n.op == "call_function":
            self.sites[n] = self._call(n)
        else:
            self.sites[n] = []
        for site in self._flat(self.sites[n]):
            if len(site.dims) > 1:
                self.joint.append((n, site))
        return result

    def _flat(self, sites: Any) -> list[Site]:
        if sites and isinstance(sites[0], list):
            return [s for group in sites for s in group]
        return list(sites or [])

    def _shape_of(self, a: Any) -> tuple[int, ...] | None:
        s = self.shapes.get(a) if isinstance(a, torch.fx.Node) else None
        return s if isinstance(s, tuple) else None

    def _blocker(self, n: torch.fx.Node, kind: str, reason: str) -> Blocker:
        b = Blocker(n.name, op_name(n.target) if n.op == "call_function" else n.op, kind, reason)
        self.blockers.append(b)
        return b

    # -- parameters and outputs ------------------------------------------------
    def _param_sites(self, value: Any) -> list[Site]:
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return []
        key = (id(value), tuple(value.shape))  # a tied tensor gets the same atoms wherever it is read
        if key not in self._param_atoms:
            self._param_atoms[key] = [
                Site((d,), self.atoms.fresh((int(size),))) for d, size in enumerate(value.shape) if size > 1
            ]
        return self._param_atoms[key]

    def _protect_outputs(self, n: torch.fx.Node) -> None:
        blocker = self._blocker(n, "output", "graph output: the model's output shape must not change")
        for a in n.all_input_nodes:
            for site in self._flat(self.sites.get(a)):
                self.atoms.freeze(site.atoms, blocker)

    # -- one call --------------------------------------------------------------
    def _call(self, n: torch.fx.Node) -> Any:
        target = n.target
        out = self.shapes[n]
        if target is operator.getitem:
            src, i = n.args[0], n.args[1]
            sites = self.sites.get(src)  # type: ignore[arg-type]
            if isinstance(self.shapes.get(src), list) and isinstance(i, int):  # type: ignore[arg-type]
                return list(sites[i]) if sites and isinstance(sites[0], list) else []
            return self._unsupported(n)
        if not isinstance(target, torch._ops.OpOverload):
            return self._unsupported(n)
        packet = target.overloadpacket
        if packet in _NO_EFFECT or out is None:
            return []
        first = n.args[0] if n.args else None
        if packet in IDENTITY | _LIKE or target is aten.view.dtype:
            same = isinstance(first, torch.fx.Node) and self.shapes.get(first) == out
            return list(self.sites.get(first, [])) if same else self._unsupported(n)  # type: ignore[arg-type]
        if packet in MOVEMENT:
            return self._movement(n)
        spec = spec_for(n, self._shape_of, out)
        if spec is None:
            return self._unsupported(n)
        return self._apply(n, spec)

    def _unsupported(self, n: torch.fx.Node, why: str = "") -> Any:
        inputs = [s for a in n.all_input_nodes for s in self._flat(self.sites.get(a))]
        if inputs:
            what = why or f"{op_name(n.target)} is not understood by the channel analysis"
            blocker = self._blocker(n, "unsupported", f"{what}; the channels through it are frozen")
            for site in inputs:
                self.atoms.freeze(site.atoms, blocker)
        out = self.shapes[n]
        return [[] for _ in out] if isinstance(out, list) else []

    # -- movement: run the op on atom ids --------------------------------------
    def _run_encoded(self, n: torch.fx.Node, source: torch.fx.Node, site: Site) -> list[Any]:
        def fill(a: torch.fx.Node) -> Any:
            v = self.env[a]
            if not isinstance(v, torch.Tensor):
                return v
            return _encode(tuple(v.shape), site) if a is source else torch.zeros(v.shape, dtype=torch.int64)

        args = torch.fx.node.map_arg(n.args, fill)
        kwargs = torch.fx.node.map_arg(n.kwargs, fill)
        out = n.target(*args, **kwargs)  # type: ignore[operator]
        return list(out) if isinstance(out, list | tuple) else [out]

    def _pad(self, n: torch.fx.Node) -> list[Site]:
        """Padding keeps every channel where it was; padded indices of a channel dim are fixed (-1)."""
        b = bind(n.target, n.args, n.kwargs)
        source = self_or_input(b)
        rank = len(self.shapes[source])
        widths = {rank - 1 - i // 2: (int(b["pad"][i]), int(b["pad"][i + 1])) for i in range(0, len(b["pad"]), 2)}
        out = []
        for site in self.sites.get(source) or []:
            atoms = site.atoms
            for axis, d in enumerate(site.dims):
                if any(widths.get(d, (0, 0))):
                    pad = [widths[d] if a == axis else (0, 0) for a in range(atoms.ndim)]
                    atoms = np.pad(atoms, pad, constant_values=-1)
            out.append(Site(site.dims, atoms))
        return out

    def _movement(self, n: torch.fx.Node) -> Any:
        out_shape = self.shapes[n]
        n_out = len(out_shape) if isinstance(out_shape, list) else 1
        found: list[list[Site]] = [[] for _ in range(n_out)]
        for source in dict.fromkeys(n.all_input_nodes):
            sites = self.sites.get(source)
            if not sites or isinstance(sites[0], list):
                continue
            reason = self._movement_blocked(n, source, sites)
            if reason:
                return self._unsupported(n, reason)
            if n.target.overloadpacket in (aten.constant_pad_nd, aten.pad):  # type: ignore[union-attr]
                return self._pad(n)
            for site in sites:
                decoded = [_decode(o) for o in self._run_encoded(n, source, site)]
                self._collapse(n, site, decoded)
                for j, d in enumerate(decoded):
                    if d is not None and d.dims and (d.atoms >= 0).any():
                        found[j].append(d)
        merged = [self._merge(n, sites) for sites in found]
        return merged if isinstance(out_shape, list) else merged[0]

    def _movement_blocked(self, n: torch.fx.Node, source: torch.fx.Node, sites: list[Site]) -> str | None:
        """Movement ops whose pruned form would not compute the restriction of the original."""
        packet = n.target.overloadpacket  # type: ignore[union-attr]
        b = bind(n.target, n.args, n.kwargs)
        rank = len(self.shapes[source])
        channel_dims = {d for s in sites for d in s.dims}
        if packet is aten.slice and b.get("step", 1) != 1 and b.get("dim", 0) % rank in channel_dims:
            return "a strided slice over channels"
        if packet in (aten.pad, aten.constant_pad_nd):
            padded = {rank - 1 - i // 2 for i, p in enumerate(b["pad"]) if p}
            if padded & channel_dims and (b.get("mode", "constant") != "constant" or min(b["pad"]) < 0):
                return f"{b.get('mode', 'constant')} padding (or cropping) over channels"
        return None

    def _collapse(self, n: torch.fx.Node, site: Site, decoded: list[Site | None]) -> None:
        """An output that keeps only part of an axis of a joint site: union along that axis.

        On a plain (1-d) channel dim, picking a single channel (select, a
        1-wide slice) freezes the dim: the index could not survive pruning.
        """
        for d in decoded:
            if d is None or not (d.atoms >= 0).any():
                continue
            if len(site.dims) == 1:
                if not d.dims:
                    reason = f"{op_name(n.target)} picks a single channel out of dim {site.dims[0]}"
                    self.atoms.freeze(site.atoms, self._blocker(n, "select", reason))
                continue
            present = np.isin(site.atoms, d.atoms[d.atoms >= 0])
            coords = np.nonzero(present)
            for axis in range(site.atoms.ndim):
                if len(np.unique(coords[axis])) < site.atoms.shape[axis]:
                    self._union_along(n, site, [axis])

    def _merge(self, n: torch.fx.Node, sites: list[Site]) -> list[Site]:
        """Sites on the same output dims from different operands (a cat) become one."""
        out: list[Site] = []
        for s in sites:
            same = next((o for o in out if o.dims == s.dims), None)
            clash = next((o for o in out if o.dims != s.dims and set(o.dims) & set(s.dims)), None)
            if same is not None and not ((same.atoms >= 0) & (s.atoms >= 0)).any():
                same.atoms = np.where(same.atoms >= 0, same.atoms, s.atoms)
                continue
            if same is None and clash is None:
                out.append(Site(s.dims, s.atoms.copy()))
                continue
            other = same if same is not None else clash
            assert other is not None
            reason = f"{op_name(n.target)} mixes two independent channel dims into one dim"
            blocker = self._blocker(n, "entangled", reason)
            self.atoms.freeze(s.atoms, blocker)
            self.atoms.freeze(other.atoms, blocker)
            out.remove(other)
        return out

    # -- compute ops: labelled dims ----------------------------------------------
    def _apply(self, n: torch.fx.Node, spec: Spec) -> Any:
        entries: list[_Entry] = []
        for k, (arg, labels) in enumerate(spec.inputs):
            sites = self.sites.get(arg) if isinstance(arg, torch.fx.Node) else None
            if not sites or isinstance(sites[0], list):
                continue
            entries += [_Entry(k, arg, s, tuple(labels[d] for d in s.dims)) for s in sites]
        self._fixed(n, spec, entries)
        live = [e for e in entries if not e.dead]
        for i, a in enumerate(live):
            for b in live[i + 1 :]:
                if set(a.labels) & set(b.labels):
                    self._couple(n, a, b)
        out_labels = {lab for o in spec.outputs if o for lab in o}
        for e in live:
            reduced = [i for i, lab in enumerate(e.labels) if lab not in out_labels or lab in spec.normalize]
            if len(reduced) < len(e.labels):  # a joint site loses some axes: what is left are the units
                self._union_along(n, e.site, reduced)
                continue
            contracted = [i for i in reduced if e.labels[i] in spec.contract]
            if contracted and len(contracted) < len(reduced):  # e.g. pixel_shuffle -> conv: slabs over space
                self._union_along(n, e.site, [i for i in reduced if i not in contracted])
            elif reduced and not contracted and not self.const[e.arg]:
                self.atoms.note(e.site.atoms, spec.note or f"{op_name(n.target)} over channels", n.name)
        outs = [self._out_sites(live, labels) if labels else [] for labels in spec.outputs]
        self._grouped(n, spec, entries)
        return outs if isinstance(self.shapes[n], list) else outs[0]

    def _fixed(self, n: torch.fx.Node, spec: Spec, entries: list[_Entry]) -> None:
        """A channel dim coupled with a dim no parameter defines cannot shrink: freeze it."""
        for k, (arg, labels) in enumerate(spec.inputs):
            shape = self._shape_of(arg)
            if shape is None:
                continue
            covered = {d for e in entries if e.k == k for d in e.site.dims}
            for d, lab in enumerate(labels):
                if shape[d] <= 1 or d in covered:
                    continue
                for e in entries:
                    if e.k != k and lab in e.labels and not e.dead:
                        reason = (
                            f"coupled with dim {d} of %{arg.name}, which no parameter defines (an input or a constant)"
                        )
                        self.atoms.freeze(e.site.atoms, self._blocker(n, "fixed", reason))
                        e.dead = True

    def _couple(self, n: torch.fx.Node, a: _Entry, b: _Entry) -> None:
        """Union the atoms of two operand sites wherever their shared labels meet (broadcast)."""
        grid = list(a.labels) + [lab for lab in b.labels if lab not in a.labels]
        ga = a.site.atoms.reshape(a.site.atoms.shape + (1,) * (len(grid) - len(a.labels)))
        order = sorted(range(len(b.labels)), key=lambda i: grid.index(b.labels[i]))
        gb_shape = [1] * len(grid)
        for i in order:
            gb_shape[grid.index(b.labels[i])] = b.site.atoms.shape[i]
        gb = b.site.atoms.transpose(order).reshape(gb_shape)
        reason = f"coupled with an index of %{b.arg.name} no parameter defines"
        self.atoms.union_pairs(ga, gb, fixed=Blocker(n.name, op_name(n.target), "fixed", reason))

    def _union_along(self, n: torch.fx.Node, site: Site, axes: list[int]) -> None:
        """Make every slab across `axes` (all other coordinates fixed) a single unit."""
        keep = [i for i in range(site.atoms.ndim) if i not in axes]
        a = site.atoms.transpose(keep + axes)
        rows = a.reshape(int(np.prod([site.atoms.shape[i] for i in keep], dtype=np.int64)), -1)
        mixed = (rows < 0).any(axis=1) & (rows >= 0).any(axis=1)
        if mixed.any():
            reason = "a channel slab includes an index no parameter defines"
            self.atoms.freeze(rows[mixed], self._blocker(n, "fixed", reason))
        self.atoms.union_rows(rows)

    def _out_sites(self, entries: list[_Entry], labels: tuple[str, ...]) -> list[Site]:
        found: list[Site] = []
        for e in entries:
            axes = [i for i, lab in enumerate(e.labels) if lab in labels]
            if not axes:
                continue
            index = tuple(slice(None) if i in axes else 0 for i in range(len(e.labels)))
            atoms = e.site.atoms[index]
            dims = [labels.index(e.labels[i]) for i in axes]
            order = sorted(range(len(dims)), key=lambda i: dims[i])
            site = Site(tuple(dims[i] for i in order), atoms.transpose(order))
            if any(set(site.dims) <= set(f.dims) for f in found):
                continue
            found = [f for f in found if not set(f.dims) <= set(site.dims)] + [site]
        return found

    def _grouped(self, n: torch.fx.Node, spec: Spec, entries: list[_Entry]) -> None:
        """Grouped conv / group_norm: the channels of one group are pruned together."""
        groups = int(spec.extra.get("groups", 1))
        if groups == 1:
            return
        c_dim = int(spec.extra.get("lead", 1))
        x = next((e for e in entries if e.k == 0 and c_dim in e.site.dims), None)
        w_out = next((e for e in entries if e.k == 1 and e.labels == ("o",)), None)
        if x is not None and x.site.dims != (c_dim,):
            reason = f"groups={groups} over a channel dim split across tensor dims"
            blocker = self._blocker(n, "unsupported", reason)
            for e in (x, w_out):
                if e is not None:
                    self.atoms.freeze(e.site.atoms, blocker)
            return
        if n.target.overloadpacket is aten.group_norm:  # type: ignore[union-attr]
            if x is not None:
                self.atoms.union_rows(x.site.atoms.reshape(groups, -1))
            return
        if w_out is None:
            return
        if x is None:
            reason = f"groups={groups} convolution over input channels that cannot shrink"
            self.atoms.freeze(w_out.site.atoms, self._blocker(n, "fixed", reason))
            return
        rows = np.concatenate([x.site.atoms.reshape(groups, -1), w_out.site.atoms.reshape(groups, -1)], axis=1)
        self.atoms.union_rows(rows)

    # -- after the walk --------------------------------------------------------
    def _rectangular(self) -> None:
        """Make each joint site's units slabs along one axis (see the module docstring)."""
        for n, site in self.joint:
            roots = self.atoms.find(site.atoms)
            sizes = site.atoms.shape
            if any(_slabs(roots, ax) for ax in range(len(sizes))):
                continue
            axis = max(range(len(sizes)), key=lambda ax: (sizes[ax], -ax))
            self._union_along(n, site, [i for i in range(len(sizes)) if i != axis])


def _slabs(roots: np.ndarray, axis: int) -> bool:
    """Is every slab of `roots` along `axis` (one index of it, all others free) a single unit?"""
    rows = np.moveaxis(roots, axis, 0).reshape(roots.shape[axis], -1)
    return bool((rows == rows[:, :1]).all())
