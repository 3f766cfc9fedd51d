"""``ascan info``: every registered model with its layout, size and cost beside the published figures.

MACs are counted by :mod:`ascan.flops` (``FlopCounterMode``, FLOPs / 2) on one image at the model's
default input size: convolutions, linear layers and the attention matrix products; normalisation,
activations, pooling and softmax are not counted — the usual convention of fvcore/thop-style MAC
figures. The published figures come from :mod:`ascan.paper`.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from ascan.errors import UserError
from ascan.paper import paper_figures
from ascan.runargs import doc_parser

if TYPE_CHECKING:  # torch, timm, rich and the FLOP counter load when a table is made, not for --help
    import torch
    from rich.console import Console

MODEL_MODULES = ("ascan", "coatnet", "neonext")  # timm's name for each module of ascan.models
COLUMNS = ("model", "layout", "params (M)", "paper params (M)", "input", "MACs (G)", "paper MACs (G)", "source")
WIDE_CONSOLE = 160


def registered_models(pattern: str = "*") -> list[str]:
    """The ascan models in timm's registry whose names match the glob ``pattern``."""
    import timm

    import ascan

    ascan.register_models()
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
    from ascan.factory import create_model
    from ascan.flops import count_macs

    model = create_model(name)
    size = model.pretrained_cfg["input_size"]
    macs = f"{count_macs(model, size) / 1e9:.2f}" if with_macs else "-"
    paper = paper_figures(name)
    published = (_figure(paper.params_m), _figure(paper.macs_g), paper.source) if paper else ("-", "-", "-")
    row = (name, model.cfg.layout, f"{count_params(model) / 1e6:.2f}", published[0], f"{size[1]}x{size[2]}",
           macs, published[1], published[2])
    return row, f"{paper.paper_name}: {paper.note}" if paper and paper.note else ""


def build_parser():
    parser = doc_parser("ascan info", __doc__)
    parser.add_argument("--models", default="*", help="glob over model names (default: all)")
    parser.add_argument("--no-macs", action="store_true", help="skip the MAC count (faster)")
    parser.add_argument("--breakdown", metavar="MODEL", help="MACs of one model per stage and operator kind")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

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
    # Counting MACs takes seconds per model (minutes for all): a bar on stderr says which one and how far.
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)
    with progress:
        task = progress.add_task("counting", total=len(names))
        for name in names:
            progress.update(task, description=f"{'counting MACs of' if not args.no_macs else 'building'} {name}")
            row, note = model_row(name, with_macs=not args.no_macs)
            table.add_row(*row)
            if note:
                notes[note] = None
            progress.advance(task)
    console.print(table)
    for note in notes:
        console.print(f"  {note}")
    return 0


def print_breakdown(console: Console, name: str) -> int:
    import timm
    from rich.table import Table

    from ascan.factory import create_model
    from ascan.flops import mac_breakdown

    registered_models()  # registers them
    if not timm.is_model(name):
        raise UserError(f"--breakdown {name!r}: not a registered model (see 'ascan info')")
    model = create_model(name)
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
