"""Training helpers for captured graphs: fine-tuning with fixed (or gradually pruned) sparsity masks.

Not a pass: the ``fine-tune`` pass (``fxpress/passes/fine_tune.py``) wraps
`fine_tune` for pipelines; call it directly for the full set of options
(loss, optimizer, a gradual ``sparsify`` schedule, progress, loss history).
"""

from fxpress.train.batches import ShuffledBatches
from fxpress.train.fine_tune import OPTIMIZERS, SCHEDULES, fine_tune, ramp_density, schedule_lr

__all__ = ["OPTIMIZERS", "SCHEDULES", "ShuffledBatches", "fine_tune", "ramp_density", "schedule_lr"]
