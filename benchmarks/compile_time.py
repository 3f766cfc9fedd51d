"""torch.compile cost per model: first-call compile time, recompile time at a second input size, and
the size of the captured graphs (issue 16, item 9: neonext compiled ~14x more captured calls than
ascan_tiny).

For every model (eval mode, ``torch.no_grad``, batch ``--batch``, inductor on the CPU):

1. ``torch._dynamo.reset()``, then ``torch.compile(model)`` with a backend that counts the nodes of
   every FX graph dynamo hands it and then calls inductor (``compile_fx``, what ``backend="inductor"``
   runs);
2. ``compile_s``: the first call at ``--sizes[0]`` (tracing + inductor + the run itself);
   ``warm_s``: the second call at that size (the run alone);
3. ``recompile_s``: the first call at ``--sizes[1]``; dynamo marks the changed dims dynamic
   (``automatic_dynamic_shapes``), so this compiles the symbolic-shape graph (``--dynamic false``: a
   second static graph);
4. graphs and nodes per compile, dynamo's ``calls_captured`` (operations traced into graphs) and
   ``unique_graphs``; ``fullgraph=True`` (``--fullgraph``) makes a graph break an error.

Compile caches (inductor's FX-graph/kernel caches, dynamo's profile-guided "this dim was dynamic last
time" cache) are off unless ``--cache``: a warm cache turns a second run into a cache hit (ascan_tiny's
30 s compile became 1.5 s), and a stored profile makes even the first call compile dynamic shapes.
The 1-minute load average before and after each model is recorded (the machine is shared).

Usage::

    python benchmarks/compile_time.py --models neonext_tiny ascan_tiny --sizes 224 256 \
        --kwargs 'neonext_tiny={"layout": "N1-N1-N3-N1"}' --out /tmp/compile_time.json

``--kwargs NAME=JSON`` (repeatable) passes model kwargs to ``timm.create_model`` for that model, e.g. a
reduced layout for a quick measurement. Model construction is seeded (``--seed``) and not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import timm
import torch

import ascan  # noqa: F401  (registers the models in timm)
from ascan.atomic import atomic_write_text


def parse_kwargs(items: list[str] | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--kwargs wants NAME=JSON, got {item!r}")
        value = json.loads(text)
        if not isinstance(value, dict):
            raise SystemExit(f"--kwargs {name}: JSON must be an object, got {text!r}")
        out[name] = value
    return out


class CountingInductor:
    """A dynamo backend: record the node count of each FX graph, then compile it with inductor."""

    def __init__(self) -> None:
        self.nodes: list[int] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.nodes.append(len(gm.graph.nodes))
        return compile_fx(gm, example_inputs)


def _captured() -> int:
    return int(torch._dynamo.utils.counters["stats"]["calls_captured"])


DYNAMIC = {"auto": None, "false": False, "true": True}  # torch.compile(dynamic=...)


def measure(name: str, kwargs: dict, sizes: tuple[int, int], batch: int, fullgraph: bool, seed: int,
            dynamic: str = "auto") -> dict:
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs).eval()
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    x1 = torch.randn(batch, 3, sizes[0], sizes[0])
    x2 = torch.randn(batch, 3, sizes[1], sizes[1])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    backend = CountingInductor()
    compiled = torch.compile(model, backend=backend, fullgraph=fullgraph, dynamic=DYNAMIC[dynamic])
    result: dict = {"model": name, "kwargs": kwargs, "params_m": round(params_m, 3),
                    "load_before": round(os.getloadavg()[0], 2)}
    with torch.no_grad():
        start = time.perf_counter()
        compiled(x1)
        result["compile_s"] = round(time.perf_counter() - start, 2)
        first_nodes = list(backend.nodes)
        result["compile_captured_calls"] = _captured()
        start = time.perf_counter()
        compiled(x1)
        result["warm_s"] = round(time.perf_counter() - start, 4)
        start = time.perf_counter()
        compiled(x2)
        result["recompile_s"] = round(time.perf_counter() - start, 2)
    recompile_nodes = backend.nodes[len(first_nodes):]
    result.update({
        "compile_graphs": len(first_nodes), "compile_nodes": first_nodes,
        "recompile_graphs": len(recompile_nodes), "recompile_nodes": recompile_nodes,
        "recompile_captured_calls": _captured() - result["compile_captured_calls"],
        "unique_graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
        "load_after": round(os.getloadavg()[0], 2),
    })
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["neonext_tiny", "ascan_tiny"])
    parser.add_argument("--sizes", nargs=2, type=int, default=[224, 256], metavar=("FIRST", "SECOND"),
                        help="input side of the first call, then of the recompile")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--kwargs", action="append", metavar="NAME=JSON", help="timm.create_model kwargs")
    parser.add_argument("--fullgraph", action="store_true", help="torch.compile(fullgraph=True)")
    parser.add_argument("--dynamic", choices=sorted(DYNAMIC), default="auto",
                        help="torch.compile(dynamic=...): auto (None, the default: the recompile is dynamic), "
                             "false (every new size compiles a static graph), true")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", action="store_true", help="keep inductor/dynamo compile caches on")
    parser.add_argument("--out", help="write the results as JSON here (atomically)")
    args = parser.parse_args(argv)
    if min(args.sizes) <= 0 or args.batch <= 0:
        parser.error("--sizes and --batch must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.cache:
        torch.compiler.config.force_disable_caches = True
    model_kwargs = parse_kwargs(args.kwargs)
    report = {
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "sizes": args.sizes, "batch": args.batch, "fullgraph": args.fullgraph, "dynamic": args.dynamic,
        "cache": args.cache, "results": [],
    }
    for name in args.models:
        row = measure(name, model_kwargs.get(name, {}), tuple(args.sizes), args.batch, args.fullgraph, args.seed,
                      args.dynamic)
        report["results"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:  # after every model, so a long run leaves what it has
            atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
