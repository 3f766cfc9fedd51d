"""Report of a benchmark run: a rich table on screen, CSV + JSON files and a PNG plot.

Files are written atomically (temporary file, then ``os.replace``) so an interrupted run never
leaves a half-written result that looks complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ascan.atomic import atomic_write_bytes
from ascan.bench.runner import Row

CSV_NAME = "bench.csv"
JSON_NAME = "bench.json"
PNG_NAME = "bench.png"
OUR_COLOUR = "tab:red"
BASELINE_COLOUR = "tab:blue"
LABEL_STEP_POINTS = 9  # vertical offset between the labels of entries drawn at one x (7-pt text)


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def parity_cell(row: Row) -> str:
    """How far the row's outputs were from eager fp32 (checked before timing): max abs error in fp32, the
    outputs' cosine below it."""
    if row.parity_max_abs is None:
        return "-"
    if row.precision == "fp32":
        return f"{row.parity_max_abs:.1e}"
    return f"cos {row.parity_cosine:.5f}"


def rich_table(rows: Sequence[Row], meta: dict[str, object], peak_given: bool) -> Table:
    reference = rows[0].reference if rows else ""
    title = (
        f"ascan bench - {meta.get('device')} {meta.get('precision', '')} - ratio: img/s over {reference}, "
        "median of per-round ratios [min-max]"
    )
    table = Table(title=title, show_lines=False)
    columns = [
        ("model", "left"),
        ("setup", "left"),
        ("vs fp32", "right"),
        ("mode", "left"),
        ("batch", "right"),
        ("res", "right"),
        ("img/s", "right"),
        ("spread", "right"),
        ("ms/batch", "right"),
        ("ratio", "right"),
        ("params M", "right"),
        ("GMACs", "right"),
        ("TFLOP/s", "right"),
    ]
    if peak_given:
        columns.append(("% peak", "right"))
    columns += [("peak MiB", "right"), ("BN folded", "right"), ("paper A100", "right")]
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        label = f"[bold red]{row.label}[/]" if row.ours else row.label
        ratio = f"{row.ratio:.2f} [{row.ratio_low:.2f}-{row.ratio_high:.2f}]" if row.ratio is not None else "-"
        cells = [
            label,
            row.setup,
            parity_cell(row),
            row.mode,
            str(row.batch_size),
            str(row.img_size),
            _fmt(row.img_per_s, ".1f"),
            f"±{row.spread_pct / 2:.1f}%",
            _fmt(row.ms_per_batch, ".1f"),
            ratio,
            _fmt(row.params_m, ".1f"),
            _fmt(row.macs_g, ".2f"),
            _fmt(row.tflops, ".3f"),
        ]
        if peak_given:
            cells.append(_fmt(row.peak_fraction * 100 if row.peak_fraction is not None else None, ".1f"))
        paper = f"{row.paper_a100_img_per_s:.0f} ({row.paper_name})" if row.paper_a100_img_per_s else "-"
        cells += [_fmt(row.peak_mem_mib, ".0f"), str(row.bn_folded), paper]
        table.add_row(*cells)
    return table


@dataclass(frozen=True)
class Best:
    """A model's fastest entry at one batch size (of its runtimes/precisions in the run), and the reference model's
    fastest entry over it, per round: ``ratio`` is reference img/s / this model's (median [low-high])."""

    model: str
    batch_size: int
    label: str
    setup: str
    img_per_s: float
    ratio: float
    ratio_low: float
    ratio_high: float


def best_entries(rows: Sequence[Row]) -> list[Best]:
    """Each model in its best runtime and precision (the entry with the highest median img/s), and the reference
    model's best over it round by round. Empty unless some model was timed in more than one entry."""
    infer = [row for row in rows if row.mode == "infer"]
    if len({row.label for row in infer}) == len({row.model for row in infer}) or not infer:
        return []
    reference_model = next((row.model for row in infer if row.label == infer[0].reference), infer[0].model)
    out: list[Best] = []
    for batch_size in sorted({row.batch_size for row in infer}):
        best: dict[str, Row] = {}
        for row in (r for r in infer if r.batch_size == batch_size):
            if row.model not in best or row.img_per_s > best[row.model].img_per_s:
                best[row.model] = row
        ref = best[reference_model]
        for model, row in best.items():
            ratios = [a / b for a, b in zip(ref.img_per_s_by_round, row.img_per_s_by_round, strict=True)]
            out.append(Best(model, batch_size, row.label, row.setup, row.img_per_s, statistics.median(ratios),
                            min(ratios), max(ratios)))
    return out


def best_table(best: Sequence[Best]) -> Table:
    reference = best[0].model if best else ""
    table = Table(title=f"each model in its best runtime and precision - {reference} / model, median of per-round "
                        "ratios [min-max]")
    for name, justify in (("model", "left"), ("batch", "right"), ("best entry", "left"), ("setup", "left"),
                          ("img/s", "right"), (f"{reference} / model", "right")):
        table.add_column(name, justify=justify)
    for entry in best:
        table.add_row(entry.model, str(entry.batch_size), entry.label, entry.setup, f"{entry.img_per_s:.2f}",
                      f"{entry.ratio:.2f} [{entry.ratio_low:.2f}-{entry.ratio_high:.2f}]")
    return table


def rows_to_csv(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    records = [asdict(row) for row in rows]
    if not records:
        return ""
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
    writer.writeheader()
    for record in records:
        record["img_per_s_by_round"] = ";".join(f"{v:.4f}" for v in record["img_per_s_by_round"])
        writer.writerow(record)
    return buffer.getvalue()


NICE_MANTISSAS = ((1, 2, 5), (1, 1.5, 2, 3, 5, 7))  # log-axis labels: coarse first, finer for a narrow range
MIN_TICKS_INSIDE = 2
LOG_TICK_MARGIN = 1.5  # a tick this factor beyond the data still labels the axis (matplotlib pads the limits)


def log_ticks(values: Sequence[float]) -> list[float]:
    """Labelled ticks for a log axis over ``values``: 1-2-5 steps (finer when the data spans less than a decade),
    at least two of them inside the data's range, so a range like 20-80 img/s has labels (matplotlib's default
    labels only powers of ten)."""
    positive = [v for v in values if v > 0]
    if not positive:
        return []
    low, high = min(positive), max(positive)
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    for mantissas in NICE_MANTISSAS:
        ticks = [m * 10.0**k for k in decades for m in mantissas
                 if low / LOG_TICK_MARGIN <= m * 10.0**k <= high * LOG_TICK_MARGIN]
        if sum(low <= tick <= high for tick in ticks) >= MIN_TICKS_INSIDE:
            return ticks
    return sorted({*ticks, *(float(f"{v:.2g}") for v in (low, high))})  # a narrow range: its ends, rounded


def plot(rows: Sequence[Row], path: Path) -> None:
    """Inference img/s vs params (log-log), one panel per batch size, our models in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    infer = [row for row in rows if row.mode == "infer"]
    batch_sizes = sorted({row.batch_size for row in infer})
    fig, axes = plt.subplots(1, max(len(batch_sizes), 1), figsize=(5.5 * max(len(batch_sizes), 1), 4.5))
    axes = list(axes) if hasattr(axes, "__iter__") else [axes]
    for axis, batch_size in zip(axes, batch_sizes, strict=False):
        labelled_at: Counter = Counter()  # entries of one model (MODEL@OPTS) share its x: stack their labels
        for row in (r for r in infer if r.batch_size == batch_size):
            colour = OUR_COLOUR if row.ours else BASELINE_COLOUR
            marker = "*" if row.fused else ("D" if row.ours else "o")
            axis.scatter(row.params_m, row.img_per_s, c=colour, marker=marker, s=90 if row.ours else 40, zorder=3)
            axis.annotate(
                row.label,
                (row.params_m, row.img_per_s),
                textcoords="offset points",
                xytext=(4, 4 - LABEL_STEP_POINTS * labelled_at[row.params_m]),
                fontsize=7,
                color=colour,
                fontweight="bold" if row.ours else "normal",
            )
            labelled_at[row.params_m] += 1
        axis.set_xscale("log")
        axis.set_yscale("log")
        plain = FuncFormatter(lambda value, _pos: f"{value:g}")
        shown = [r for r in infer if r.batch_size == batch_size]
        axes_values = ((axis.xaxis, [r.params_m for r in shown]), (axis.yaxis, [r.img_per_s for r in shown]))
        for scale_axis, values in axes_values:
            scale_axis.set_major_locator(FixedLocator(log_ticks(values)))
            scale_axis.set_major_formatter(plain)
            scale_axis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("parameters (M)")
        axis.set_ylabel("images / s")
        axis.set_title(f"batch {batch_size}")
        axis.grid(True, which="both", alpha=0.3)
    fig.suptitle("throughput vs size (red: ascan models, *: fused with ascan.fuse)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")  # long labels widen the image, not clipped
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_all(rows: Sequence[Row], meta: dict[str, object], out_dir: Path) -> dict[str, Path]:
    """CSV, JSON (rows + machine/config metadata) and PNG under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = {"csv": out_dir / CSV_NAME, "json": out_dir / JSON_NAME, "png": out_dir / PNG_NAME}
    atomic_write_bytes(paths["csv"], rows_to_csv(rows).encode())
    document = {"meta": meta, "rows": [asdict(row) for row in rows],
                "best": [asdict(entry) for entry in best_entries(rows)]}
    atomic_write_bytes(paths["json"], json.dumps(document, indent=2, default=str).encode())
    plot(rows, paths["png"])
    return paths


def print_table(rows: Sequence[Row], meta: dict[str, object], peak_given: bool, console: Console) -> None:
    console.print(rich_table(rows, meta, peak_given))
    best = best_entries(rows)
    if best:
        console.print(best_table(best))
