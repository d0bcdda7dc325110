"""The Pareto plot: accuracy against latency, point size by model size, the front joined, baselines named.

Written with matplotlib's Agg backend (no display needed) by `AutoResult.save`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fxpress.auto.result import AutoResult, Point


def _front_2d(points: Sequence[Point]) -> list[Point]:
    """The points no faster point beats on accuracy, by latency (the staircase drawn)."""
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (p.latency, -p.accuracy)):
        if not out or p.accuracy > out[-1].accuracy:
            out.append(p)
    return out


def plot_pareto(result: AutoResult, path: str | Path) -> None:
    """Every evaluated point (hollow: latency estimated; filled: measured), the Pareto front, the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    biggest = max((p.size_bytes for p in result.points), default=1) or 1
    for p in result.points:
        area = 20 + 200 * p.size_bytes / biggest
        face = "C0" if p.latency_measured else "none"
        ax.scatter(p.latency, p.accuracy, s=area, facecolors=face, edgecolors="C0", alpha=0.6, linewidths=1)
        if p.source in ("float", "int8", "include"):
            ax.annotate(p.source, (p.latency, p.accuracy), fontsize=8, xytext=(4, 4), textcoords="offset points")
    front = _front_2d(result.points)
    ax.step(
        [p.latency for p in front],
        [p.accuracy for p in front],
        "C1-",
        where="post",
        lw=1,
        label="accuracy-latency front",
    )
    for p in result.pareto:  # the (accuracy, latency, size) Pareto set: ringed
        ax.scatter(p.latency, p.accuracy, s=60, facecolors="none", edgecolors="C1", linewidths=1.2)
    if result.best is not None:
        ax.scatter(result.best.latency, result.best.accuracy, s=160, marker="*", color="C3", label="best", zorder=3)
    b = result.budget
    if b.accuracy is not None:
        ax.axhline(b.accuracy, color="C2", ls="--", lw=1, label=b.text())
        top = max(p.accuracy for p in result.points)
        low = b.accuracy - 3 * max(top - b.accuracy, 1e-6)
        hidden = sum(p.accuracy < low for p in result.points)
        ax.set_ylim(low, top + 0.3 * (top - low))
        if hidden:
            ax.text(0.01, 0.01, f"{hidden} point(s) below the axis", transform=ax.transAxes, fontsize=7)
    elif b.latency_ms is not None:
        ax.axvline(b.latency_ms, color="C2", ls="--", lw=1, label=b.text())
    ax.set_xlabel(f"latency, ms ({result.target}/{result.isa}, {result.threads} thread(s))")
    ax.set_ylabel(f"accuracy ({result.evaluation})")
    ax.set_title(
        "fxpress auto: filled = whole model timed, hollow = estimated; area = size; ringed = Pareto", fontsize=9
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
