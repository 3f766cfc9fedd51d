"""Search outputs: ``trials.csv`` (every trial), ``pareto.png`` (accuracy vs measured latency) and
``winners.txt`` (the best layouts, as strings ``timm.create_model("ascan_nano", layout=...)`` accepts)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ascan.atomic import atomic_write, atomic_write_text

TRIALS_CSV, PARETO_PNG, WINNERS_TXT = "trials.csv", "pareto.png", "winners.txt"
CSV_FIELDS = ("number", "state", "layout", "predicted_ms", "measured_ms", "proxy_top1", "worker", "duplicate_of",
              "kind")


@dataclass
class Point:
    """One layout on the plot: ``kind`` is 'trial', 'pruned' (top-1 at the epoch it stopped), 'published' or
    'symmetric'."""

    layout: str
    top1: float
    measured_ms: float
    kind: str = "trial"
    name: str = ""


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both axes (higher top-1, lower latency), sorted by latency."""
    front: list[Point] = []
    for p in sorted(points, key=lambda q: (q.measured_ms, -q.top1)):
        if not front or p.top1 > front[-1].top1:
            front.append(p)
    return front


def write_trials_csv(path: str | Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_pareto(path: str | Path, points: Sequence[Point], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    trials = [p for p in points if p.kind == "trial"]
    ax.scatter([p.measured_ms for p in trials], [p.top1 for p in trials], s=14, c="tab:gray", label="trials")
    pruned = [p for p in points if p.kind == "pruned"]
    if pruned:
        ax.scatter([p.measured_ms for p in pruned], [p.top1 for p in pruned], s=14, facecolors="none",
                   edgecolors="tab:gray", label="pruned (top-1 when stopped)")
    front = pareto_front(trials)
    ax.plot([p.measured_ms for p in front], [p.top1 for p in front], "-o", c="tab:red", ms=4, label="frontier")
    for kind, marker, colour in (("published", "*", "tab:blue"), ("symmetric", "s", "tab:green")):
        ref = [p for p in points if p.kind == kind]
        if ref:
            ax.scatter([p.measured_ms for p in ref], [p.top1 for p in ref], marker=marker, s=60, c=colour,
                       label=kind)
            for p in ref:
                ax.annotate(p.name or p.layout, (p.measured_ms, p.top1), fontsize=7)
    ax.set_xlabel("measured latency (ms / batch)")
    ax.set_ylabel("proxy test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def write_winners(path: str | Path, lines: list[str]) -> None:
    atomic_write_text(path, "\n".join(lines) + "\n")
