"""Structured pruning: the channel-dependency analysis, importance, planning and pass.

    groups = analyze(graph)                         # every set of coupled channels
    fxpress.optimize(graph, "prune-channels{ratio=0.5}")

prune-report, which shows what a ratio would remove before anything changes,
is a report and lives above the passes: `fxpress.reports.prune_report`.

Files, one concern each: ``atoms`` (the union-find over channel indices),
``ops`` (how each ATen op moves channels), ``propagate`` (the walk over the
graph), ``groups`` (the ``channel-groups`` analysis and its result),
``importance``, ``plan`` (ratio, rounding, protection, checks), ``rewrite``
(slicing parameters, shape constants) and
``prune_channels`` (the pass).
"""

from fxpress.passes.prune.atoms import Blocker
from fxpress.passes.prune.errors import PruneError
from fxpress.passes.prune.groups import ChannelGroups, ChannelGroupsAnalysis, Group, Member, analyze
from fxpress.passes.prune.importance import IMPORTANCE, importance
from fxpress.passes.prune.plan import ChannelsPruned, PrunePlan, plan_pruning
from fxpress.passes.prune.prune_channels import PruneChannels

__all__ = [
    "IMPORTANCE",
    "Blocker",
    "ChannelGroups",
    "ChannelGroupsAnalysis",
    "ChannelsPruned",
    "Group",
    "Member",
    "PruneChannels",
    "PruneError",
    "PrunePlan",
    "analyze",
    "importance",
    "plan_pruning",
]
