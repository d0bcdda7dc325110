"""`Tie`: how the members of one shared weight move together while it trains.

    tie = Tie.of(weight, note)          # once per epoch: which positions share a value
    p.grad = tie.gradient(p.grad)       # after backward: each member gets its group's summed gradient
    opt.step(); tie.project(p)          # after the step: every member takes its group's value again

Deep Compression's centroid fine-tuning: the gradient of a centroid is the
sum of its members' gradients, and SGD moves it by ``lr`` times that sum.
Giving every member that sum moves every member exactly as the centroid
moves, under any element-wise optimizer (SGD with momentum, Adam, AdamW):
members start equal and receive equal gradients, so their states and values
stay equal. `project` makes that exact whatever the kernels' rounding: each
member takes the value of its group's first member after the step.

- k-means: the groups are the weight's distinct values (`torch.unique`'s
  inverse), computed from the weight itself, so a centroid that reached
  another centroid's value simply merges with it; with ``zeros`` (pruned
  zeros kept apart) the zeros are *held*: gradient 0, value 0.
- hash: the groups are the buckets of `hash_index`, with signs: a bucket's
  gradient is the sum of ``sign * grad`` of its members (HashedNets' eq. 12),
  scattered back times ``sign``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxpress.sharing.annotations import SharedWeights, first_members, hash_index


@dataclass(frozen=True)
class Tie:
    """The groups of one shared weight: each flat position's group, sign and whether it is held at zero."""

    group: torch.Tensor  # int64 [numel]
    sign: torch.Tensor | None  # [numel] of +-1 in the weight's dtype (hash), or None
    held: torch.Tensor | None  # bool [numel]: pruned zeros held at zero (k-means with zeros apart), or None
    first: torch.Tensor  # int64 [groups]: one member of each group (a valid position even when empty)
    groups: int

    @classmethod
    def of(cls, weight: torch.Tensor, note: SharedWeights) -> Tie:
        """The groups `note` gives `weight` (which must obey it: see `SharedWeights.problem`)."""
        flat = weight.detach().flatten()
        if note.method == "hash":
            index, sign = hash_index(tuple(weight.shape), note.clusters, note.seed)
            group, groups, held = index.flatten(), note.clusters, None
            signs: torch.Tensor | None = sign.flatten().to(weight.dtype)
        else:
            _, group = torch.unique(flat, return_inverse=True)
            groups, signs = int(group.max()) + 1 if flat.numel() else 0, None
            held = flat == 0 if note.zeros else None
        first = first_members(group, groups).clamp(max=max(flat.numel() - 1, 0))
        return cls(group, signs, held, first, groups)

    def gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Each member's gradient replaced by its group's sum (signed for a hash; 0 where held)."""
        g = grad.flatten() if self.sign is None else grad.flatten() * self.sign
        sums = torch.zeros(self.groups, dtype=g.dtype, device=g.device).index_add_(0, self.group, g)
        out = sums[self.group] if self.sign is None else sums[self.group] * self.sign
        if self.held is not None:
            out = out.masked_fill(self.held, 0.0)
        return out.view_as(grad)

    @torch.no_grad()
    def project(self, weight: torch.Tensor) -> None:
        """Set every member of `weight` (in place) to its group's value, read at the group's first member."""
        flat = weight.view(-1)
        values = flat[self.first] if self.sign is None else flat[self.first] * self.sign[self.first]
        new = values[self.group] if self.sign is None else values[self.group] * self.sign
        if self.held is not None:
            new = new.masked_fill(self.held, 0.0)
        flat.copy_(new)
