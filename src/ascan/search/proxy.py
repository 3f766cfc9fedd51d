"""The short-training accuracy proxy: ``ascan train``'s own task and engine, at a tiny budget.

A candidate layout is scored by training it for a few epochs on a subset of the main job's data, with the
main job's config (widths, optimiser, augmentation) and nothing else changed, so the proxy ranks layouts as
the full run would treat them. No EMA (its warm-up makes a few hundred steps meaningless) and test top-1
after every epoch, which is reported to Optuna so its pruner can stop a weak trial early.

The proxy scores on the ``val`` split (the last 10k Fashion-MNIST training images; the engine still names the
metric ``test_top1``) and trains on at most the first 50k, so selection never sees the test set; the final
comparison is on the full test set.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ascan.config import Range
from ascan.runargs import bundled_config

DEFAULT_CONFIG = "fashion_mnist.yaml"
PROXY_METRIC = "test_top1"
TRAIN_SUBSET_RANGE = Range(64, 50_000)  # disjoint from the val split (last 10k)
EVAL_SUBSET_RANGE = Range(64, 10_000)
EPOCHS_RANGE = Range(1, 100)

# report(epoch, top1) -> True to stop the trial (the pruner's verdict)
Reporter = Callable[[int, float], bool]


class Pruned(Exception):
    """The reporter asked to stop this trial after an epoch."""


@dataclass(frozen=True)
class ProxySettings:
    """How much training one candidate gets: ``epochs`` over the first ``train_subset`` training images."""

    train_subset: int = 6000
    eval_subset: int = 2000
    epochs: int = 3
    seed: int = 0
    config: str | None = None  # base YAML; None: the main job's configs/fashion_mnist.yaml
    overrides: tuple[str, ...] = ()  # extra --set style overrides, applied last

    def __post_init__(self) -> None:
        for name, value, valid in (("train_subset", self.train_subset, TRAIN_SUBSET_RANGE),
                                   ("eval_subset", self.eval_subset, EVAL_SUBSET_RANGE),
                                   ("epochs", self.epochs, EPOCHS_RANGE)):
            if value not in valid:
                raise ValueError(f"{name} must be in {valid}, got {value}")


def train_overrides(layout: str, output: str | Path, proxy: ProxySettings) -> list[str]:
    return [f"model.kwargs.layout={layout}", f"data.train_subset={proxy.train_subset}",
            f"data.eval_subset={proxy.eval_subset}", "data.eval_split=val", f"optim.epochs={proxy.epochs}",
            "optim.ema_decay=null", "optim.warmup_epochs=0.1", f"seed={proxy.seed}", f"output={output}",
            "progress=false", "compile=off", "eval_every=1", *proxy.overrides]


def base_config(proxy: ProxySettings) -> str | None:
    return proxy.config or (str(bundled_config(DEFAULT_CONFIG)) if bundled_config(DEFAULT_CONFIG) else None)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def run_proxy(layout: str, output: str | Path, proxy: ProxySettings, report: Reporter | None = None) -> float:
    """Train ``layout`` briefly into run folder ``output`` (overwritten: it is the trial's own) and return
    its last test top-1 (%). Raises :class:`Pruned` when ``report`` says stop after some epoch."""
    from ascan.classify.config import load_config
    from ascan.classify.train import train
    from ascan.engine.runlog import METRICS_CSV

    cfg = load_config(base_config(proxy), train_overrides(layout, output, proxy))
    metrics = Path(output) / METRICS_CSV
    seen = [0]

    def on_step(_step: int) -> None:  # the previous epoch's row is in metrics.csv once the next epoch runs
        rows = [r for r in _rows(metrics) if r.get(PROXY_METRIC)]
        for row in rows[seen[0]:]:
            seen[0] += 1
            if report is not None and report(int(row["epoch"]), float(row[PROXY_METRIC])):
                raise Pruned(f"pruned after epoch {row['epoch']}")

    result = train(cfg, overwrite=True, step_callback=on_step)
    return float(result.metrics[PROXY_METRIC])
