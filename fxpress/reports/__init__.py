"""Reports: what a compression would do to a model, measured before anything is committed.

- `quant_report` (``quant-report``): per-layer int8 error on calibration
  data, worst first, and what stays float and why;
- `prune_report` (``prune-report``): the channel groups a pruning ratio would
  shrink, what blocks each, and the parameter and MAC reduction.

Reports sit above the passes (they run pipelines and read analyses) and below
nothing but the CLI; no pass imports them. The submodules are imported on
demand (``from fxpress.reports.quant_report import quant_report``), so
importing this package costs nothing.
"""
