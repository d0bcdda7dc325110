"""The Pareto plot: accuracy against latency, point size by model size, the front joined, baselines named.

Written with matplotlib's Agg backend (no display needed) by `AutoResult.save`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fxpress.auto.result import AutoResult


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
    front = result.pareto
    ax.plot([p.latency for p in front], [p.accuracy for p in front], "C1-", lw=1, label="Pareto front")
    if result.best is not None:
        ax.scatter(result.best.latency, result.best.accuracy, s=160, marker="*", color="C3", label="best", zorder=3)
    b = result.budget
    if b.accuracy is not None:
        ax.axhline(b.accuracy, color="C2", ls="--", lw=1, label=b.text())
    elif b.latency_ms is not None:
        ax.axvline(b.latency_ms, color="C2", ls="--", lw=1, label=b.text())
    ax.set_xlabel(f"latency, ms ({result.target}/{result.isa}, {result.threads} thread(s))")
    ax.set_ylabel(f"accuracy ({result.evaluation})")
    ax.set_title("fxpress auto: filled = whole model measured, hollow = estimated; area = size", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
