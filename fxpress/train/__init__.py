"""Training helpers for captured graphs: fine-tuning with fixed (or gradually pruned) sparsity masks, distillation.

Not passes: the ``fine-tune`` and ``distil`` passes (``fxpress/passes/fine_tune.py``,
``fxpress/passes/distill.py``) wrap `fine_tune` and `distil` for pipelines;
call them directly for the full set of options (loss, optimizer, a gradual
``sparsify`` schedule, progress, loss history). Both train through the same
masked loop (``fxpress/train/loop.py``).
"""

from fxpress.train.batches import ShuffledBatches
from fxpress.train.distill import distil
from fxpress.train.fine_tune import fine_tune, ramp_density
from fxpress.train.loop import OPTIMIZERS, SCHEDULES, schedule_lr

__all__ = ["OPTIMIZERS", "SCHEDULES", "ShuffledBatches", "distil", "fine_tune", "ramp_density", "schedule_lr"]
