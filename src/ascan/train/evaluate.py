"""``ascan eval``: top-1/top-5 accuracy (torchmetrics) of a checkpoint on a data set.

Reads a training checkpoint (``runs/x``, ``runs/x/last.pt``) or a ``.safetensors`` export (then the model
is rebuilt from the metadata written beside the weights). Evaluates the EMA weights when the checkpoint
has them, unless ``--no-ema``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


def accuracy_metrics(num_classes: int, device: torch.device):
    """Micro-averaged top-1 and top-k accuracy; top-k is capped by the number of classes."""
    from torchmetrics.classification import MulticlassAccuracy

    top_k = min(5, num_classes)
    top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro").to(device)
    topk = MulticlassAccuracy(num_classes=num_classes, top_k=top_k, average="micro").to(device)
    return top1, topk


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, device: torch.device, batch_size: int = 500,
             amp_dtype: torch.dtype | None = None, dist_info=None) -> dict[str, float]:
    """Accuracy in percent and mean cross-entropy over ``dataset``; ranks split it and sum their counts."""
    from ascan.train.distributed import DistInfo, all_reduce_sum

    dist_info = dist_info or DistInfo()
    indices = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    top1, top5 = accuracy_metrics(num_classes, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        top1.update(logits, targets)
        top5.update(logits, targets)
    model.train(was_training)
    counts = torch.stack([loss_sum.cpu(), torch.tensor(float(len(indices)), dtype=torch.float64)])
    counts = all_reduce_sum(counts.to(device), dist_info).cpu()
    # torchmetrics syncs its states across an initialised process group inside compute().
    return {"top1": 100.0 * top1.compute().item(), "top5": 100.0 * top5.compute().item(),
            "loss": (counts[0] / counts[1]).item(), "n": int(counts[1].item())}


def _model_from_safetensors(path: Path, args) -> tuple[nn.Module, dict]:
    import timm
    from safetensors import safe_open

    from ascan.train.checkpoint import load_weights_file

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    name = args.model or meta.get("model")
    if not name:
        raise ValueError(f"{path} carries no model name; pass --model")
    kwargs = json.loads(meta.get("model_kwargs", "{}"))
    model = timm.create_model(name, num_classes=int(meta.get("num_classes", 10)),
                              in_chans=int(meta.get("in_chans", 1)), **kwargs)
    from ascan.train.loop import load_model_state

    load_model_state(model, load_weights_file(path), str(path))
    data = {"image_size": int(meta.get("image_size", 32)), "dataset": meta.get("dataset", "fashion_mnist"),
            "root": meta.get("data_root") or None, "eval_split": meta.get("eval_split", "test")}
    return model, {"model": {"name": name, "kwargs": kwargs}, "data": data}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ascan eval", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="run folder, checkpoint file (last.pt) or .safetensors weights")
    parser.add_argument("--dataset", choices=["fashion_mnist", "imagefolder"], help="default: the run's data set")
    parser.add_argument("--data-root", help="data folder (default: the run's)")
    parser.add_argument("--split", help="split to evaluate (default: the run's eval split, e.g. 'test')")
    parser.add_argument("--image-size", type=int, help="evaluation resolution (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--model", help="timm model name (only for .safetensors without metadata)")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw weights, not the EMA")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import ascan  # noqa: F401
    from ascan.data.datasets import build_dataset
    from ascan.train.checkpoint import load_checkpoint
    from ascan.train.config import config_from_dict
    from ascan.train.distributed import DistInfo
    from ascan.train.loop import create_model, load_model_state, resolve_device

    path = Path(args.checkpoint)
    if path.suffix == ".safetensors":
        model, base = _model_from_safetensors(path, args)
        cfg = config_from_dict(base)
    else:
        state = load_checkpoint(path)
        cfg = config_from_dict(state["config"])
        model = None
    if args.dataset:
        cfg.data.dataset = args.dataset
    if args.data_root:
        cfg.data.root = args.data_root
    if args.split:
        cfg.data.eval_split = args.split
    if args.image_size:
        cfg.data.image_size = args.image_size
    cfg.data.eval_subset = None
    eval_set, info = build_dataset(cfg.data, cfg.aug, train=False)
    if model is None:
        model = create_model(cfg, info)
        use_ema = not args.no_ema and state.get("ema") is not None
        load_model_state(model, state["ema"] if use_ema else state["model"], str(path))
    device = resolve_device(args.device, DistInfo())
    model.to(device)
    result = evaluate(model, eval_set, info.num_classes, device, args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{cfg.model.name} on {cfg.data.dataset}/{cfg.data.eval_split} ({result['n']} images): "
              f"top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  loss {result['loss']:.4f}")
    sys.stdout.flush()
    return 0
