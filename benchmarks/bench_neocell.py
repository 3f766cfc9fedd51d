"""NeoCell timing: block-diagonal form vs patch form vs a 7x7 depthwise conv, NeoNeXt-T stage shapes.

All three ops run interleaved round by round on the same input (so machine-load drifts hit them
alike); the median per op is reported, with the two ratios the issue asks for:

* ``patch / blockdiag``: speed-up of the block-diagonal fast path over the reference patch form
  (paper §3.4: 15x on a V100 GPU);
* ``blockdiag / dwconv``: NeoCell's cost relative to the 7x7 depthwise conv it replaces.

Usage: ``python benchmarks/bench_neocell.py [--batch 32] [--threads 1] [--rounds 9] [--backward]``
``--sizes`` instead prints parameters and FLOPs of NeoNeXt-T/S/B at 224 (FlopCounterMode, both forms).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ascan.layers.neocell import MultiNeoCell
from ascan.layers.neonext_block import EARLY_STAGE_SIZES, LAST_STAGE_SIZES
from ascan.paper import paper_figures

DWCONV_KERNEL = 7  # the ConvNeXt depthwise conv NeoCell replaces
PAPER_SIZES = {  # Table 1 of the NeoNeXt paper: params (M), GFLOPs at 224 (fvcore: multiply-adds)
    name: (paper_figures(name).params_m, paper_figures(name).macs_g)
    for name in ("neonext_tiny", "neonext_small", "neonext_base")
}


@dataclass(frozen=True)
class StageShape:
    name: str
    channels: int
    side: int  # feature-map height = width at 224x224 input
    depth: int  # NeoNeXt-T blocks in the stage
    sizes: tuple[int, ...]
    shift: bool


NEONEXT_T_STAGES = (
    StageShape("stage1", 96, 56, 3, EARLY_STAGE_SIZES, True),
    StageShape("stage2", 192, 28, 3, EARLY_STAGE_SIZES, True),
    StageShape("stage3", 384, 14, 9, EARLY_STAGE_SIZES, True),
    StageShape("stage4", 768, 7, 3, LAST_STAGE_SIZES, False),
)


def make_ops(stage: StageShape) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    cell = MultiNeoCell(stage.channels, stage.sizes, shift=stage.shift)
    dwconv = nn.Conv2d(stage.channels, stage.channels, DWCONV_KERNEL, padding=DWCONV_KERNEL // 2,
                       groups=stage.channels)
    return {"blockdiag": cell.forward_blockdiag, "patch": cell.forward_patches, "dwconv": dwconv}


def time_once(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        op(x).sum().backward()
    else:
        with torch.no_grad():
            op(x)
    return time.perf_counter() - start


def bench_stage(stage: StageShape, batch: int, rounds: int, warmup: int, backward: bool) -> dict[str, float]:
    ops = make_ops(stage)
    x = torch.randn(batch, stage.channels, stage.side, stage.side, requires_grad=backward)
    times: dict[str, list[float]] = {name: [] for name in ops}
    for r in range(warmup + rounds):
        for name, op in ops.items():  # interleaved: every round times every op once
            t = time_once(op, x, backward)
            if r >= warmup:
                times[name].append(t)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def print_model_sizes(resolution: int = 224) -> None:
    """Params and FlopCounterMode counts (it counts 2 FLOPs per multiply-add) for both NeoCell forms."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    import ascan  # noqa: F401  (registers the models)

    print(f"{'model':14} {'params':>8} {'paper':>6} {'GMACs blockdiag':>16} {'GMACs patch':>12} {'paper':>6}")
    for name, (paper_params, paper_gflops) in PAPER_SIZES.items():
        model = timm.create_model(name).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gmacs = {}
        for impl in ("blockdiag", "patch"):
            model.set_neocell_impl(impl)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(torch.randn(1, 3, resolution, resolution))
            gmacs[impl] = counter.get_total_flops() / 2 / 1e9
        print(f"{name:14} {params:>7.2f}M {paper_params:>5.1f}M {gmacs['blockdiag']:>16.2f} "
              f"{gmacs['patch']:>12.2f} {paper_gflops:>6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--sizes", action="store_true", help="print model params/FLOPs instead of timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.sizes:
        print_model_sizes()
        return 0

    mode = "fwd+bwd" if args.backward else "fwd"
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, {mode}, "
          f"median of {args.rounds} interleaved rounds, times in ms")
    header = f"{'stage':8} {'C':>5} {'HxW':>6} {'blockdiag':>10} {'patch':>9} {'dwconv7':>9} " \
             f"{'patch/bd':>9} {'bd/dwconv':>10}"
    print(header)
    totals = {"blockdiag": 0.0, "patch": 0.0, "dwconv": 0.0}
    for stage in NEONEXT_T_STAGES:
        ms = bench_stage(stage, args.batch, args.rounds, args.warmup, args.backward)
        for name in totals:
            totals[name] += ms[name] * stage.depth
        print(f"{stage.name:8} {stage.channels:>5} {stage.side:>3}x{stage.side:<2} {ms['blockdiag']:>10.2f} "
              f"{ms['patch']:>9.2f} {ms['dwconv']:>9.2f} {ms['patch'] / ms['blockdiag']:>8.2f}x "
              f"{ms['blockdiag'] / ms['dwconv']:>9.2f}x")
    print(f"{'net (x depth 3-3-9-3)':22} {totals['blockdiag']:>10.2f} {totals['patch']:>9.2f} "
          f"{totals['dwconv']:>9.2f} {totals['patch'] / totals['blockdiag']:>8.2f}x "
          f"{totals['blockdiag'] / totals['dwconv']:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
