"""A trained detector back from its run: pictures of its predictions a person can read, and its ONNX export.

The run (folder, ``last.pt`` or an exported ``.safetensors``) is read by the one reader,
:func:`ascan.engine.trained.read_run` (EMA weights when the run kept them, unless ``--no-ema``). Each picture
shows the input, the ground truth where the run's data set holds the image (its COCO masks and boxes), and the
predictions scoring at least ``--score-thresh`` (masks in the class colour, boxes captioned ``"<class>
<score>"``), enlarged, with a legend of the classes shown (:mod:`ascan.segment.overlay`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import Subset
from torchvision.utils import draw_segmentation_masks

from ascan.atomic import atomic_write
from ascan.data.coco import CocoInstances, load_rgb
from ascan.detect.config import DetectConfig, config_from_dict, detector_cfg
from ascan.detect.data import build_dataset, split_files
from ascan.detect.metrics import binary_masks
from ascan.detect.task import DetectionTask
from ascan.detect.train import build_model
from ascan.engine import load_model_state
from ascan.engine.trained import read_run
from ascan.errors import UserError
from ascan.model_kwargs import check_config_model_kwargs
from ascan.segment.overlay import (
    BACKGROUND,
    Picture,
    class_colours,
    compose,
    enlarge,
    label_font,
    readable_ink,
    sample_index,
    scale_for,
    to_uint8,
)

MASK_ALPHA = 0.45
BOX_WIDTH = 2
DEFAULT_SCORE = 0.5
OVERLAY_TAG = "_overlay"  # output names: <stem>_overlay.png
MAX_REASON_CHARS = 200  # of the tracer's message, in the one-line refusal


@dataclass
class TrainedDetector:
    model: nn.Module
    cfg: DetectConfig
    class_names: tuple[str, ...]
    source: str  # the file read and which weights, for messages: "runs/x/last.pt (EMA weights)"
    weights_kind: str = "EMA"


def load_trained(run: str | Path, prefer_ema: bool = True) -> TrainedDetector:
    """The detector of a run folder, checkpoint or exported ``.safetensors``, in eval mode on the CPU."""
    trained = read_run(run, "detect", prefer_ema=prefer_ema)
    names = trained.extra.get("class_names")
    if not names:
        raise UserError(f"{trained.source} is not an 'ascan detect' run (no class names)")
    cfg = config_from_dict(trained.config)
    check_config_model_kwargs(cfg, str(trained.source))
    model = build_model(cfg, len(names))
    load_model_state(model, trained.weights, str(trained.source))
    return TrainedDetector(model.eval(), cfg, tuple(names), trained.origin, trained.weights_kind)


def label_colours(class_names: tuple[str, ...]) -> list[tuple[int, int, int]]:
    """Colour of each detector label (0 the background, ``i`` = ``class_names[i - 1]``), as segmentation's."""
    return class_colours((BACKGROUND, *class_names))


def draw_detections(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None,
                    captions: list[str], colours: list[tuple[int, int, int]], scale: int) -> torch.Tensor:
    """uint8 [3, H*scale, W*scale]: ``image`` enlarged, masks tinted and boxes outlined in their class colour,
    each box captioned above its top-left corner (drawn after enlarging, so the text stays sharp)."""
    canvas = enlarge(to_uint8(image), scale)
    box_colours = [colours[int(label)] for label in labels]
    if masks is not None and len(masks):
        canvas = draw_segmentation_masks(canvas, enlarge(masks.bool(), scale), alpha=MASK_ALPHA, colors=box_colours)
    picture = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy())
    draw, font = ImageDraw.Draw(picture), label_font()
    for box, caption, colour in zip((boxes * scale).tolist(), captions, box_colours, strict=True):
        draw.rectangle(box, outline=colour, width=BOX_WIDTH)
        left, bottom = box[0], max(box[1], 0)
        text = draw.textbbox((left, bottom), caption, font=font, anchor="lb")
        draw.rectangle(text, fill=colour)
        draw.text((left, bottom), caption, fill=readable_ink(colour), font=font, anchor="lb")
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def picture(image: torch.Tensor, pred: dict[str, torch.Tensor], truth: dict[str, torch.Tensor] | None,
            class_names: tuple[str, ...], score_thresh: float = DEFAULT_SCORE) -> tuple[Picture, int]:
    """Input | ground truth (when given) | the predictions scoring >= ``score_thresh``, and a legend of the classes
    in either; with the number of predictions drawn."""
    colours = label_colours(class_names)
    scale = scale_for(*image.shape[-2:])
    keep = pred["scores"] >= score_thresh
    labels = pred["labels"][keep]
    masks = binary_masks(pred["masks"][keep]) if "masks" in pred else None
    captions = [f"{class_names[int(label) - 1]} {float(score):.2f}"
                for label, score in zip(labels, pred["scores"][keep], strict=True)]
    panels = [("input", enlarge(to_uint8(image), scale))]
    present = set(labels.tolist())
    if truth is not None:
        truth_captions = [class_names[int(label) - 1] for label in truth["labels"]]
        panels.append(("ground truth", draw_detections(image, truth["boxes"], truth["labels"], truth["masks"],
                                                       truth_captions, colours, scale)))
        present |= set(truth["labels"].tolist())
    panels.append(("prediction", draw_detections(image, pred["boxes"][keep], labels, masks, captions, colours,
                                                 scale)))
    legend = [(class_names[label - 1], colours[label]) for label in sorted(present)]
    return compose(panels, legend), len(labels)


@dataclass
class GroundTruth:
    """The COCO target of an input image when it is one of the run's training or evaluation images, else None
    (only what is on disk is read: the scenes are never made here)."""

    cfg: DetectConfig
    _sets: dict[bool, CocoInstances | None] = field(default_factory=dict)

    def _dataset(self, train: bool) -> CocoInstances | None:
        if train not in self._sets:
            try:
                self._sets[train] = CocoInstances(*split_files(self.cfg, train))
            except (UserError, OSError, ValueError, TypeError):
                self._sets[train] = None
        return self._sets[train]

    def __call__(self, path: Path) -> dict[str, torch.Tensor] | None:
        resolved = path.resolve()
        for train in (False, True):
            images = split_files(self.cfg, train)[1]
            if not resolved.is_relative_to(images.resolve()):
                continue
            dataset = self._dataset(train)
            index = sample_index(dataset, resolved) if dataset is not None else None
            if index is not None:
                target = dataset.raw_target(index)
                return {key: target[key].as_subclass(torch.Tensor) for key in ("boxes", "labels", "masks")}
        return None


def save_png(image: Image.Image, path: Path) -> None:
    atomic_write(path, image.save)


@torch.no_grad()
def predict_files(trained: TrainedDetector, files: list[Path], outputs: list[Path], score_thresh: float = DEFAULT_SCORE,
                  progress: bool = True, device: torch.device | str = "cpu",
                  batch_size: int = 1) -> list[tuple[Path, int]]:
    """One picture per input at ``outputs``; returns (picture, detections drawn) per input."""
    from tqdm import tqdm

    model = trained.model.to(device)
    ground_truth = GroundTruth(trained.cfg)
    written = []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        chunk = range(start, min(start + batch_size, len(files)))
        images = [load_rgb(files[i]).as_subclass(torch.Tensor).float() / 255.0 for i in chunk]
        preds = model([image.to(device) for image in images])
        for i, image, pred in zip(chunk, images, preds, strict=True):
            pred = {key: value.cpu() for key, value in pred.items()}
            shown, drawn = picture(image, pred, ground_truth(files[i]), trained.class_names, score_thresh)
            save_png(shown.image, outputs[i])
            written.append((outputs[i], drawn))
        bar.update(len(chunk))
    bar.close()
    return written


def run_predict(args: argparse.Namespace) -> int:
    """``ascan detect predict``: one picture per image."""
    from ascan.data.images import default_prediction_folder, image_files, output_paths
    from ascan.engine import session
    from ascan.paths import check_output_folder

    out_dir = check_output_folder(args.output or default_prediction_folder("detect", args.run), "--output")
    files = image_files(args.images, args.limit)
    outputs = output_paths(files, out_dir, tag=OVERLAY_TAG, overwrite=args.overwrite)
    trained = load_trained(args.run, prefer_ema=not args.no_ema)
    with session(args.device, args.threads) as env:
        written = predict_files(trained, files, outputs, args.score_thresh, not args.no_progress, env.device,
                                args.batch_size or trained.cfg.data.eval_batch_size)
    print(f"wrote {len(written)} pictures to {out_dir} ({sum(n for _, n in written)} detections scoring >= "
          f"{args.score_thresh}; {trained.source})")
    return 0


def whole_detector_untraceable(model: nn.Module, image_size: int) -> str | None:
    """Why ``torch.export`` (the dynamo exporter's tracer) cannot trace the whole detector, in one line, or None.

    torch.export's messages begin with the partial graph: the reason is the first line that is not graph code,
    and where it was raised (``Caused by: ...``) when it says so.
    """
    example = [torch.rand(3, image_size, image_size) for _ in range(2)]  # batch 2: no size-1 specialisation
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)  # the tracer logs the partial graph (thousands of lines) on failure
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            torch.export.export(model.eval(), (example,), strict=False)
    except Exception as err:  # noqa: BLE001 - whatever stops the tracer is the reason reported
        lines = [line.strip() for line in str(err).splitlines()
                 if line.strip() and not line[0].isspace() and not line.startswith("def forward")]
        cause = next((line for line in lines if line.startswith("Caused by:")), "")
        reason = lines[0] if lines else type(err).__name__
        return f"{reason[:MAX_REASON_CHARS]} {cause}".strip()
    finally:
        torch_log.setLevel(level)
    return None


def run_export(args: argparse.Namespace) -> int:
    """``ascan detect export``: the detector's backbone feature maps (``--features-only``); the whole detector is
    tried first and refused in one line when the exporter cannot trace it."""
    from ascan.detect.deploy import detector_deploy_data
    from ascan.export.command import check_export_args
    from ascan.export.command import run_export as export_model
    from ascan.segment.commands import bake_input_size

    opts = check_export_args(args)
    trained = load_trained(args.run, prefer_ema=not args.no_ema)
    cfg, backbone = trained.cfg, trained.model.backbone
    multiple = backbone.size_divisible
    img_size = opts.img_size or -(-cfg.data.image_size // multiple) * multiple
    if not opts.features_only:
        reason = whole_detector_untraceable(trained.model, img_size)
        if reason is not None:
            raise UserError(f"{cfg.model.arch} cannot be exported whole: the exporter cannot trace it ({reason}); "
                            "--features-only exports its backbone's feature maps")
        raise UserError(f"{cfg.model.arch} traces, but its ONNX checks are not wired up yet; use --features-only")
    body = backbone.body
    # what the exporter's one input-size rule (ascan.factory.check_input_size) reads: multiples of the deepest stride
    body.strict_input_size, body.reduction = True, multiple
    bake_input_size(body, img_size)
    opts = dataclasses.replace(opts, features_only=False)  # the body is the feature-map network already
    name = f"{cfg.model.backbone} features {list(backbone.out_indices)} ({cfg.model.arch} backbone)"
    deploy = detector_deploy_data(trained.model, cfg, eval_limit=opts.eval_limit) if opts.precision == "int8" else None
    return export_model(body, args, opts, name=name, origin=trained.source, in_chans=detector_cfg(cfg).in_chans,
                        img_size=img_size, features=False, outputs=[f"stage{i}" for i in backbone.out_indices],
                        deploy=deploy)


def run_eval(args) -> int:
    """``ascan detect eval``: COCO box and mask AP, naming the weights and the precision it scored."""
    from ascan.data.coco import CocoInstances
    from ascan.engine import autocast_dtype, session
    from ascan.segment.commands import precision_name

    if (args.annotations is None) != (args.images is None):
        raise UserError("--annotations and --images go together")
    trained = load_trained(args.run, prefer_ema=not args.no_ema)
    if args.annotations:
        dataset = CocoInstances(args.annotations, args.images)
        if dataset.class_names != trained.class_names:
            raise UserError(f"{args.annotations}: categories {', '.join(dataset.class_names)} differ from the "
                            f"run's {', '.join(trained.class_names)}")
    else:
        dataset, _ = build_dataset(trained.cfg, train=False, progress=not args.no_progress)
    if args.limit is not None and args.limit < len(dataset):
        dataset = Subset(dataset, range(args.limit))
    task = DetectionTask(dataset, args.batch_size or trained.cfg.data.eval_batch_size, not args.no_progress)
    with session(args.device, args.threads) as env:
        dtype = autocast_dtype(args.amp, env.device)
        metrics = task.evaluate(trained.model.to(env.device), env.device, dtype)
    result = {**metrics, "weights": trained.weights_kind, "precision": precision_name(dtype), "images": len(dataset),
              "source": trained.source}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{trained.source}: {len(dataset)} images, {trained.weights_kind} weights, {result['precision']}")
    for kind in ("box", "mask"):
        print(f"  {kind:<4} AP {metrics[f'{kind}_map']:5.1f}   AP50 {metrics[f'{kind}_map_50']:5.1f}   "
              f"AP75 {metrics[f'{kind}_map_75']:5.1f}")
    return 0


__all__ = ["run_eval", "GroundTruth", "TrainedDetector", "label_colours", "load_trained", "picture", "predict_files",
           "run_export", "run_predict"]
