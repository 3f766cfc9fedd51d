"""A trained segmenter back from its run, class maps of new images, and pictures of them a person can read.

The run (folder, ``last.pt`` or an exported ``.safetensors``) is read by the one reader,
:func:`ascan.engine.trained.read_run`; its config is re-validated like a YAML file and its model kwargs
checked before any model is built; the weights go through a strict, shape-checked load. Each picture shows
the input, the ground truth where the run's data set holds the image (:class:`GroundTruth`), and the
prediction, enlarged, with a legend of the classes shown (:mod:`ascan.segment.overlay`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ascan.atomic import atomic_write
from ascan.data.coco import load_rgb
from ascan.data.dense_transforms import to_float_image
from ascan.engine import load_model_state
from ascan.engine.trained import read_run
from ascan.errors import UserError
from ascan.model_kwargs import check_config_model_kwargs
from ascan.segment.config import SegmentConfig, config_from_dict
from ascan.segment.data import image_folder, open_split, pad_collate
from ascan.segment.model import Segmenter
from ascan.segment.overlay import (
    Picture,
    class_colours,
    colour_labels,
    compose,
    enlarge,
    present_classes,
    sample_index,
    scale_for,
    to_uint8,
)
from ascan.segment.task import evaluate_segmenter
from ascan.segment.train import NUM_CLASSES_KEY, create_segmenter

DEFAULT_ALPHA = 1.0  # the prediction panel in flat class colours: the input is beside it
OVERLAY_TAG, LABELS_TAG = "_overlay", "_labels"  # output names: <stem>_overlay.png, <stem>_labels.png
DEFAULT_EXPORT_SIZE = 512  # export side of a run with neither a crop size nor fixed-size scenes (ADE20K's crop)


@dataclass
class TrainedSegmenter:
    cfg: SegmentConfig
    model: Segmenter
    class_names: tuple[str, ...]
    source: str  # the file read and which weights, for messages: "runs/x/last.pt (EMA weights)"
    weights_kind: str = "EMA"  # "EMA" or "raw" (or "exported": a .safetensors file's own weights)


def load_trained(source: str | Path, prefer_ema: bool = True) -> TrainedSegmenter:
    """The model of a run folder, a checkpoint file or an exported ``.safetensors`` (EMA weights by default)."""
    run = read_run(source, "segment", prefer_ema=prefer_ema)
    num_classes = run.extra.get(NUM_CLASSES_KEY)
    if num_classes is None:
        raise UserError(f"{run.source} has no '{NUM_CLASSES_KEY}' entry: not an 'ascan segment' run")
    cfg = config_from_dict(run.config)
    check_config_model_kwargs(cfg, str(run.source))
    names = run.extra.get("class_names") or []
    names = tuple(names) if len(names) == num_classes else tuple(map(str, range(num_classes)))
    model = create_segmenter(cfg, num_classes)
    load_model_state(model, run.weights, str(run.source))
    return TrainedSegmenter(cfg, model.eval(), names, run.origin, run.weights_kind)


@torch.no_grad()
def predict_batch(model: Segmenter, images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Class maps int64 [H, W] of float images [3, H, W] of any sizes: padded together to the model's multiple,
    then each cropped back to its own size."""
    batch = pad_collate([(image, torch.zeros(image.shape[-2:], dtype=torch.int64)) for image in images],
                        model.size_multiple, 0)[0]
    labels = model(batch.to(device)).argmax(1).cpu()
    return [labels[i, :image.shape[-2], :image.shape[-1]] for i, image in enumerate(images)]


def predict_labels(model: Segmenter, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Class map int64 [H, W] of one float image [3, H, W]."""
    return predict_batch(model, [image], device)[0]


@dataclass
class GroundTruth:
    """The label map of an input image when it is one of the run's training or evaluation images, else None.

    Only what is on disk is read (the scenes are never made here); a data set that cannot be opened gives None.
    """

    cfg: SegmentConfig
    _splits: dict[str, Dataset | None] = field(default_factory=dict)

    def _dataset(self, split: str) -> Dataset | None:
        if split not in self._splits:
            try:
                self._splits[split] = open_split(self.cfg, split)[0]
            except (UserError, OSError, ValueError):
                self._splits[split] = None
        return self._splits[split]

    def __call__(self, path: Path) -> torch.Tensor | None:
        resolved = path.resolve()
        for split in dict.fromkeys((self.cfg.data.eval_split, self.cfg.data.train_split)):
            if not resolved.is_relative_to(image_folder(self.cfg, split).resolve()):
                continue
            dataset = self._dataset(split)
            index = sample_index(dataset, resolved) if dataset is not None else None
            if index is not None:
                return dataset[index][1].as_subclass(torch.Tensor)
        return None


def picture(image: torch.Tensor, labels: torch.Tensor, truth: torch.Tensor | None, class_names: tuple[str, ...],
            alpha: float = DEFAULT_ALPHA) -> Picture:
    """Input | ground truth (when given) | prediction, enlarged, and a legend of the classes in either map."""
    scale = scale_for(*labels.shape)
    colours = class_colours(class_names)
    panels = [("input", enlarge(to_uint8(image), scale))]
    shown = [labels]
    if truth is not None and truth.shape == labels.shape:
        panels.append(("ground truth", enlarge(colour_labels(image, truth, colours, alpha), scale)))
        shown.append(truth)
    panels.append(("prediction", enlarge(colour_labels(image, labels, colours, alpha), scale)))
    present = present_classes(*shown, num_classes=len(class_names))
    return compose(panels, [(class_names[c], colours[c]) for c in present])


def save_png(picture_or_map: Image.Image | torch.Tensor, path: Path) -> None:
    """A picture, or a class map [H, W] as a one-byte index PNG, written atomically."""
    image = picture_or_map
    if isinstance(image, torch.Tensor):
        image = Image.fromarray(image.to(torch.uint8).numpy())
    atomic_write(path, image.save)


def predict_files(trained: TrainedSegmenter, files: list[Path], outputs: list[Path], device: torch.device,
                  alpha: float = DEFAULT_ALPHA, label_outputs: list[Path] | None = None, batch_size: int = 1,
                  progress: bool = False) -> list[Path]:
    """One picture per image at ``outputs`` (and its class map at ``label_outputs``, if given), ``batch_size``
    images per forward pass; the files written."""
    from tqdm import tqdm

    model = trained.model.to(device)
    ground_truth = GroundTruth(trained.cfg)
    written = []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        chunk = range(start, min(start + batch_size, len(files)))
        images = [to_float_image(load_rgb(files[i])) for i in chunk]
        for i, image, labels in zip(chunk, images, predict_batch(model, images, device), strict=True):
            save_png(picture(image, labels, ground_truth(files[i]), trained.class_names, alpha).image, outputs[i])
            written.append(outputs[i])
            if label_outputs is not None:
                save_png(labels, label_outputs[i])
                written.append(label_outputs[i])
        bar.update(len(chunk))
    bar.close()
    return written


def run_predict(args: argparse.Namespace) -> int:
    """``ascan segment predict``: one picture per image (and its class map with ``--save-labels``)."""
    from ascan.data.images import default_prediction_folder, image_files, output_paths
    from ascan.engine import session
    from ascan.paths import check_output_folder

    out_dir = check_output_folder(args.output or default_prediction_folder("segment", args.run), "--output")
    files = image_files(args.images, args.limit)
    outputs = output_paths(files, out_dir, tag=OVERLAY_TAG, overwrite=args.overwrite)
    labels = output_paths(files, out_dir, tag=LABELS_TAG, overwrite=args.overwrite) if args.save_labels else None
    trained = load_trained(args.run, prefer_ema=not args.no_ema)
    with session(args.device, args.threads) as env:
        written = predict_files(trained, files, outputs, env.device, args.alpha, labels,
                                args.batch_size or trained.cfg.data.eval_batch_size, not args.no_progress)
    pictures = len(set(written) & set(outputs))
    maps = f" and {len(written) - pictures} class maps" if labels else ""
    print(f"wrote {pictures} pictures{maps} to {out_dir} ({trained.source})", file=sys.stderr)
    return 0


def export_size(trained: TrainedSegmenter, asked: int | None) -> int:
    """``--img-size`` (checked by the exporter: the one input-size rule), else the run's crop size or scene size,
    else :data:`DEFAULT_EXPORT_SIZE`, rounded up to a multiple of the segmenter's coarsest stride."""
    from ascan.segment.config import scene_config

    if asked is not None:
        return asked
    multiple = trained.model.size_multiple
    cfg = trained.cfg
    size = cfg.aug.crop_size or (scene_config(cfg.data).image_size if cfg.data.source == "scenes" else
                                 DEFAULT_EXPORT_SIZE)
    return -(-size // multiple) * multiple


def run_export(args: argparse.Namespace) -> int:
    """``ascan segment export``: the whole segmenter (backbone + UPerNet) through the one exporter."""
    from ascan.export.command import check_export_args
    from ascan.export.command import run_export as export_model
    from ascan.segment.commands import bake_input_size
    from ascan.segment.deploy import segmenter_deploy_data

    opts = check_export_args(args)
    trained = load_trained(args.run, prefer_ema=not args.no_ema)
    model, cfg = trained.model, trained.cfg
    name = f"{cfg.model.backbone}+UPerNet ({cfg.model.protocol})"
    img_size = export_size(trained, opts.img_size)
    bake_input_size(model.backbone, img_size)
    deploy = (segmenter_deploy_data(model, cfg, trained.class_names, eval_limit=opts.eval_limit)
              if opts.precision == "int8" else None)
    return export_model(model, args, opts, name=name, origin=trained.source, in_chans=model.cfg.in_chans,
                        img_size=img_size, features=False, deploy=deploy)


def run_eval(args: argparse.Namespace) -> int:
    """``ascan segment eval``: mIoU, pixel accuracy and per-class IoU, naming the weights and precision scored."""
    from ascan.config import apply_overrides, config_to_dict
    from ascan.engine import autocast_dtype, session
    from ascan.segment.commands import precision_name
    from ascan.segment.config import config_from_dict
    from ascan.segment.data import build_eval_dataset, subset

    trained = load_trained(args.run, prefer_ema=not args.no_ema)
    overrides = [*args.overrides, *(["progress=false"] if args.no_progress else [])]
    cfg = config_from_dict(apply_overrides(config_to_dict(trained.cfg), overrides))
    dataset, info = build_eval_dataset(cfg, args.split)
    dataset = subset(dataset, args.limit)
    with session(args.device, args.threads) as env:
        dtype = autocast_dtype(args.amp, env.device)
        result = evaluate_segmenter(trained.model.to(env.device), dataset, trained.model.num_classes,
                                    trained.model.size_multiple, env.device, info.ignore_index, trained.class_names,
                                    args.batch_size or cfg.data.eval_batch_size, dtype)
    split = args.split or cfg.data.eval_split
    result = {**result, "weights": trained.weights_kind, "precision": precision_name(dtype), "images": len(dataset),
              "split": split, "source": trained.source}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{trained.source} on {cfg.data.source} {split} ({len(dataset)} images, {trained.weights_kind} weights, "
          f"{result['precision']}): mIoU {result['mIoU']:.2f}  pixel accuracy {result['pixel_acc']:.2f}")
    if args.per_class:
        for key, value in result.items():
            if key.startswith("IoU."):
                print(f"  {key[len('IoU.'):]:<20} {value:6.2f}")
    return 0


__all__ = ["run_eval", "GroundTruth", "TrainedSegmenter", "class_colours", "export_size", "load_trained", "picture",
           "predict_files", "predict_labels", "run_export", "run_predict"]
