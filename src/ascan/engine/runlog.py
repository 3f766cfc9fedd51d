"""What a run leaves to read: ``metrics.csv`` (one row per epoch), ``curves.png``, ``summary.json``.

Rows are plain ``{name: float}`` dicts, whatever the task logs. Metric names follow ``<split>_<metric>``
(``train_loss``, ``test_top1``, ``ema_miou``): the curves put every split of one metric on one panel.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from ascan.atomic import atomic_write, atomic_write_text

METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
SUMMARY_JSON = "summary.json"
SPLITS = ("train", "test", "ema")  # prefixes of metric names; the rest of the name is the panel
BOOKKEEPING = ("epoch", "step", "lr", "epoch_time_s", "train_img_per_s")  # logged, not plotted
PANEL_COLUMNS = 3
PANEL_SIZE_IN = 4.0
PLOT_DPI = 100


def write_metrics_csv(history: list[dict[str, float]], path: Path) -> None:
    """All rows, with the union of their columns (a column first logged later is empty before)."""
    if not history:
        return
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def metric_panels(history: list[dict[str, float]]) -> dict[str, list[str]]:
    """``{panel: [column, ...]}``: ``test_top1`` and ``ema_top1`` share panel ``top1``."""
    panels: dict[str, list[str]] = {}
    for row in history:
        for key in row:
            if key in BOOKKEEPING:
                continue
            split, _, rest = key.partition("_")
            panel = rest if split in SPLITS and rest else key
            if key not in panels.setdefault(panel, []):
                panels[panel].append(key)
    return panels


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """One panel per metric against epoch, one line per split (train / test / EMA)."""
    panels = metric_panels(history)
    if not panels:
        return
    cols = min(PANEL_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(PANEL_SIZE_IN * cols, PANEL_SIZE_IN * rows))  # no pyplot: no backend, no global state
    axes = fig.subplots(rows, cols, squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, (panel, keys) in zip(axes.flat, panels.items(), strict=False):
        for key in keys:
            values = [row.get(key, math.nan) for row in history]
            ax.plot(epochs, values, "o-", label=key.partition("_")[0] if key != panel else key)
        ax.set(xlabel="epoch", title=panel)
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=PLOT_DPI))


def write_summary(summary: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(summary, indent=2))


def epoch_line(row: dict[str, float]) -> str:
    """``epoch 3 | train_loss 0.4120 | 812 img/s | 41s | test_top1 90.1200``: one line per epoch."""
    parts = [f"epoch {row['epoch']:g}"]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if k not in BOOKKEEPING]
    parts += [f"{row.get('train_img_per_s', 0):.0f} img/s", f"{row.get('epoch_time_s', 0):.0f}s"]
    return " | ".join(parts)


def print_summary(title: str, summary: dict[str, Any], metrics: dict[str, float], run_dir: Path) -> None:
    """One screen at the end: status, size, every final metric, wall time, where the files are."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", "completed" if summary["completed"] else "stopped (continue with --resume)")
    table.add_row("epochs / steps", f"{summary['epochs']:g} / {summary['steps']}")
    table.add_row("parameters", f"{summary['num_params'] / 1e6:.3f} M")
    for key, value in metrics.items():
        if key not in BOOKKEEPING and not math.isnan(value):
            table.add_row(key, f"{value:.4f}")
    if "train_img_per_s" in metrics:
        table.add_row("train throughput", f"{metrics['train_img_per_s']:.0f} img/s")
    table.add_row("wall time", f"{summary['wall_time_s'] / 60:.1f} min")
    table.add_row("run folder", str(run_dir))
    Console().print(table)
