"""``ascan info``: every registered model with its layout, size and cost beside the published figures.

MACs are counted by :mod:`ascan.flops` (``FlopCounterMode``, FLOPs / 2) on one image at the model's
default input size: convolutions, linear layers and the attention matrix products; normalisation,
activations, pooling and softmax are not counted — the usual convention of fvcore/thop-style MAC
figures. The published figures come from :mod:`ascan.paper`.
"""

from __future__ import annotations

import argparse
import fnmatch

import timm
import torch
from rich.console import Console
from rich.table import Table

import ascan  # noqa: F401  (registers the models)
from ascan.errors import UserError
from ascan.flops import count_macs, mac_breakdown
from ascan.paper import paper_figures

MODEL_MODULES = ("ascan", "coatnet", "neonext")  # timm's name for each module of ascan.models
COLUMNS = ("model", "layout", "params (M)", "paper params (M)", "input", "MACs (G)", "paper MACs (G)", "source")
WIDE_CONSOLE = 160


def registered_models(pattern: str = "*") -> list[str]:
    """The ascan models in timm's registry whose names match the glob ``pattern``."""
    names = []
    for module in MODEL_MODULES:
        names += [n for n in timm.list_models(module=module) if fnmatch.fnmatch(n, pattern)]
    return names


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def model_row(name: str, with_macs: bool = True) -> tuple[tuple[str, ...], str]:
    """One table row for model ``name`` (the :data:`COLUMNS`), and the published row's note ("" if none)."""
    model = timm.create_model(name)
    size = model.pretrained_cfg["input_size"]
    macs = f"{count_macs(model, size) / 1e9:.2f}" if with_macs else "-"
    paper = paper_figures(name)
    published = (_figure(paper.params_m), _figure(paper.macs_g), paper.source) if paper else ("-", "-", "-")
    row = (name, model.cfg.layout, f"{count_params(model) / 1e6:.2f}", published[0], f"{size[1]}x{size[2]}",
           macs, published[1], published[2])
    return row, f"{paper.paper_name}: {paper.note}" if paper and paper.note else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ascan info", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="*", help="glob over model names (default: all)")
    parser.add_argument("--no-macs", action="store_true", help="skip the MAC count (faster)")
    parser.add_argument("--breakdown", metavar="MODEL", help="MACs of one model per stage and operator kind")
    args = parser.parse_args(argv)
    console = Console(width=None if Console().is_terminal else WIDE_CONSOLE)
    if args.breakdown:
        return print_breakdown(console, args.breakdown)

    names = registered_models(args.models)
    if not names:
        raise UserError(f"--models {args.models!r}: no registered model matches (see 'timm.list_models()')")
    table = Table(title="ascan models (params at 1000 classes unless the model's default differs; "
                        "MACs: torch.utils.flop_counter, FLOPs/2)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "layout", "source") else "right")
    notes: dict[str, None] = {}
    with console.status("counting...") as status:
        for name in names:
            status.update(f"counting {name}")
            row, note = model_row(name, with_macs=not args.no_macs)
            table.add_row(*row)
            if note:
                notes[note] = None
    console.print(table)
    for note in notes:
        console.print(f"  {note}")
    return 0


def print_breakdown(console: Console, name: str) -> int:
    if not timm.is_model(name):
        raise UserError(f"--breakdown {name!r}: not a registered model (see 'ascan info')")
    model = timm.create_model(name)
    size = model.pretrained_cfg["input_size"]
    parts = mac_breakdown(model, size)
    kinds = sorted({k for ops in parts.values() for k in ops})
    table = Table(title=f"{name} MACs at {size[1]}x{size[2]} by part (G; FlopCounterMode FLOPs/2)")
    table.add_column("part")
    for kind in [*kinds, "total"]:
        table.add_column(kind, justify="right")
    for part, ops in [*parts.items(), ("total", {k: sum(o.get(k, 0) for o in parts.values()) for k in kinds})]:
        table.add_row(part, *[f"{ops.get(k, 0) / 1e9:.3f}" for k in kinds], f"{sum(ops.values()) / 1e9:.3f}")
    console.print(table)
    return 0
