"""Structured pruning: the channel-dependency analysis, importance, report and pass.

    groups = analyze(graph)                         # every set of coupled channels
    print(prune_report(graph, 0.5).text())          # what ratio 0.5 would remove
    fxpress.optimize(graph, "prune-channels{ratio=0.5}")

Files, one concern each: ``atoms`` (the union-find over channel indices),
``ops`` (how each ATen op moves channels), ``propagate`` (the walk over the
graph), ``groups`` (the ``channel-groups`` analysis and its result),
``importance``, ``plan`` (ratio, rounding, protection, checks), ``report``
(``prune-report``), ``rewrite`` (slicing parameters, shape constants) and
``prune_channels`` (the pass).
"""

from fxpress.passes.prune.atoms import Blocker
from fxpress.passes.prune.errors import PruneError
from fxpress.passes.prune.groups import ChannelGroups, ChannelGroupsAnalysis, Group, Member, analyze
from fxpress.passes.prune.importance import IMPORTANCE, importance
from fxpress.passes.prune.plan import ChannelsPruned, PrunePlan, plan_pruning
from fxpress.passes.prune.prune_channels import PruneChannels
from fxpress.passes.prune.report import PruneReport, prune_report

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
    "PruneReport",
    "analyze",
    "importance",
    "plan_pruning",
    "prune_report",
]
