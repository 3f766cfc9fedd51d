"""``ascan info``: every registered model with its layout, size and cost beside the published figures.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one image at the model's default
input size and halved (the counter reports FLOPs = 2 x MACs). It counts convolutions, linear layers and
the attention matrix products (``bmm``/SDPA); normalisation, activations, pooling and softmax are not
counted — the usual convention of fvcore/thop-style MAC figures.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib

import timm
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

import ascan  # noqa: F401  (registers the models)

MODEL_MODULES = ("ascan.models.ascan", "ascan.models.coatnet", "ascan.models.neonext")


def paper_figures() -> dict[str, tuple[float | None, float | None]]:
    """{model name: (params in M, MACs in G)} as published, gathered from each model family module."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for name in MODEL_MODULES:
        out.update(getattr(importlib.import_module(name), "PAPER_FIGURES", {}))
    return out


def registered_models(pattern: str = "*") -> list[str]:
    names = []
    for module in MODEL_MODULES:
        names += [n for n in timm.list_models(module=module.rsplit(".", 1)[-1]) if fnmatch.fnmatch(n, pattern)]
    return names


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: torch.nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a single image of ``input_size`` (C, H, W)."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size))
    return counter.get_total_flops() // 2


@torch.no_grad()
def mac_breakdown(model: torch.nn.Module, input_size: tuple[int, ...]) -> dict[str, dict[str, int]]:
    """MACs per top-level part (stem, each stage, head) and per operator kind (conv, linear, attention)."""
    model.eval()
    with FlopCounterMode(display=False, depth=None) as counter:
        model(torch.zeros(1, *input_size))
    root = type(model).__name__
    parts: dict[str, dict[str, int]] = {}
    for module_name, ops in counter.get_flop_counts().items():
        segments = module_name.split(".")
        if segments[0] != root or len(segments) < 2 or module_name.count(".") != (2 if segments[1] in (
                "stem", "stages") else 1):
            continue
        kinds: dict[str, int] = {}
        for op, flops in ops.items():
            kinds[_op_kind(str(op))] = kinds.get(_op_kind(str(op)), 0) + flops // 2
        parts[".".join(segments[1:])] = kinds
    return parts


def _op_kind(op: str) -> str:
    if "attention" in op:
        return "attention (QK^T, AV)"
    if "conv" in op:
        return "conv"
    return "linear" if "mm" in op else op


def layout_of(model: torch.nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "layout", "") or getattr(model, "layout", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ascan info", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="*", help="glob over model names (default: all)")
    parser.add_argument("--no-macs", action="store_true", help="skip the MAC count (faster)")
    parser.add_argument("--breakdown", metavar="MODEL", help="MACs of one model per stage and operator kind")
    args = parser.parse_args(argv)
    console = Console(width=None if Console().is_terminal else 160)
    if args.breakdown:
        return print_breakdown(console, args.breakdown)

    names = registered_models(args.models)
    if not names:
        raise ValueError(f"no registered model matches {args.models!r}")
    paper = paper_figures()
    table = Table(title="ascan models (params at 1000 classes unless the model's default differs; "
                        "MACs: torch.utils.flop_counter, FLOPs/2)")
    for col in ("model", "layout", "params (M)", "paper params (M)", "input", "MACs (G)", "paper MACs (G)"):
        table.add_column(col, justify="left" if col in ("model", "layout") else "right")
    with console.status("counting...") as status:
        for name in names:
            status.update(f"counting {name}")
            model = timm.create_model(name)
            size = model.pretrained_cfg["input_size"]
            params = count_params(model) / 1e6
            macs = "-" if args.no_macs else f"{count_macs(model, size) / 1e9:.2f}"
            p_params, p_macs = paper.get(name, (None, None))
            table.add_row(name, layout_of(model), f"{params:.2f}", "-" if p_params is None else f"{p_params:g}",
                          f"{size[1]}x{size[2]}", macs, "-" if p_macs is None else f"{p_macs:g}")
    console.print(table)
    return 0


def print_breakdown(console: Console, name: str) -> int:
    if name not in timm.list_models():
        raise ValueError(f"unknown model {name!r}")
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
