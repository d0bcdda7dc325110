"""Tuning: MetaSchedule searches a model's kernels on this machine; compile replays the winners.

One module per job, so that compiling needs only the records:

- `records`: the cache on disk (one directory per target) and the replay,
  the ``apply-records`` lowering stage; all that `compile` imports;
- `tasks`: which fused functions of a model are worth a search (imports
  compile's `import_graph` and the lowering stages, so tuned workloads are
  the functions compile schedules);
- `search`: `tune`, the MetaSchedule search of each task within its share of
  the budget, and the worker pool that builds candidates;
- `report`: the side-by-side timing of a task's best candidate against
  fxpress's rule, and `TuneReport`, what `tune` returns and the CLI prints;
- `intrinsics`: a fast import of TVM's tensor intrinsics (a patch of
  ``inspect.stack`` for its duration), needed by replay and search alike.

Imports point one way: search -> tasks -> compile -> records -> intrinsics,
and search -> report. Nothing is imported here, so that importing
`records` does not pull in the search (and, through `tasks`, compile itself).
"""
