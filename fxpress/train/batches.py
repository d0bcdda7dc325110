"""`ShuffledBatches`: labelled mini-batches for `fine_tune`, reshuffled (seeded) on every pass."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class ShuffledBatches:
    """Mini-batches ``(x, y)`` of `x` and `y`, in a new order on every pass, the same orders for the same seed."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int = 64, seed: int = 0) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        self.x, self.y, self.batch = x, y, batch
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.x) + self.batch - 1) // self.batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=self.gen)
        for i in range(0, len(order), self.batch):
            idx = order[i : i + self.batch]
            yield self.x[idx], self.y[idx]
