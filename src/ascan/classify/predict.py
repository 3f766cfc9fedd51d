"""``predict`` of a trained classifier: the top-k classes of image files, as a CSV and a contact sheet.

Each image is preprocessed exactly as the run's evaluation split is (:func:`ascan.data.datasets.image_transform`:
a Fashion-MNIST run sees it as a 28 x 28 grayscale image padded to the model's grid, an ImageFolder run through
timm's evaluation resize and centre crop, each with the run's normalisation), scored in fp32, and the softmax's
top-k classes are written to ``predictions.csv`` (one row per image: its path, then class name and probability,
best first) and drawn on ``contact_sheet.png`` (each thumbnail captioned with its top-1 class and probability).

The outputs go to a folder of their own (default ``predictions/classify-<run name>``): one that already holds
files is refused unless ``overwrite``, and neither output may be one of the inputs.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torchvision.transforms.v2.functional import pil_to_tensor
from torchvision.utils import make_grid

from ascan.atomic import atomic_write, atomic_write_text
from ascan.classify.config import PredictSettings
from ascan.classify.model import TrainedClassifier, load_trained
from ascan.data.datasets import image_transform
from ascan.data.images import default_prediction_folder, image_files
from ascan.engine.distributed import DistInfo
from ascan.engine.runtime import resolve_device
from ascan.errors import UserError
from ascan.paths import check_output_folder

CSV_NAME = "predictions.csv"
SHEET_NAME = "contact_sheet.png"
THUMB_SIDE = 96  # px: a 28-px Fashion-MNIST image stays recognisable, and 8 thumbnails fit a screen's width
CAPTION_HEIGHT = 14  # px under each thumbnail: one line of PIL's default font
CAPTION_MARGIN = 2
SHEET_COLUMNS = 8
SHEET_MAX_IMAGES = 256  # more make an unreadable, huge sheet; the CSV has every image
GRID_PADDING = 2
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


@dataclass
class Prediction:
    """One image's top-k classes (indices) and their probabilities, best first."""

    path: Path
    classes: list[int]
    probabilities: list[float]


@dataclass
class PredictReport:
    """What :func:`predict` wrote, for the command's one line."""

    csv: Path
    sheet: Path
    count: int  # rows written to the CSV: one per image
    on_sheet: int
    top_k: int
    origin: str  # the weights scored (``runs/x/last.pt (EMA weights)``)


def claim_output(folder: Path, files: list[Path], overwrite: bool) -> tuple[Path, Path]:
    """The CSV's and the contact sheet's paths in ``folder``, refused when the folder already holds files (unless
    ``overwrite``: then those two are replaced) or when one of them is an input."""
    check_output_folder(folder, "--output")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise UserError(f"--output {folder} already holds files: choose a new folder, or --overwrite to replace "
                        f"its {CSV_NAME} and {SHEET_NAME}")
    inputs = {file.resolve() for file in files}
    targets = folder / CSV_NAME, folder / SHEET_NAME
    for target in targets:
        if target.resolve() in inputs:
            raise UserError(f"{target} is one of the inputs: choose another --output folder")
    return targets


def _read(path: Path, transform, thumbnail: bool) -> tuple[torch.Tensor, Image.Image | None]:
    """The model's input for ``path`` and, if asked, its thumbnail (a one-line error for an unreadable file)."""
    try:
        with Image.open(path) as image:
            image.load()  # the pixels stay usable once the file is closed
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's ways of refusing a file
        raise UserError(f"{path} is not a readable image ({err})") from None
    thumb = ImageOps.pad(image.convert("RGB"), (THUMB_SIDE, THUMB_SIDE), color=WHITE) if thumbnail else None
    return transform(image), thumb


@torch.no_grad()
def predict_images(trained: TrainedClassifier, files: list[Path], device: torch.device, top_k: int,
                   batch_size: int) -> tuple[list[Prediction], list[Image.Image]]:
    """Top-k classes of every file (fp32 softmax), and thumbnails of the first :data:`SHEET_MAX_IMAGES`."""
    transform = image_transform(trained.cfg.data)
    model = trained.model.to(device).eval()
    predictions: list[Prediction] = []
    thumbs: list[Image.Image] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        inputs = []
        for path in chunk:
            tensor, thumb = _read(path, transform, len(predictions) + len(inputs) < SHEET_MAX_IMAGES)
            inputs.append(tensor)
            thumbs += [thumb] if thumb is not None else []
        probabilities = model(torch.stack(inputs).to(device)).float().softmax(dim=-1)
        top = probabilities.topk(top_k, dim=-1)
        predictions += [Prediction(path, classes, values) for path, classes, values
                        in zip(chunk, top.indices.tolist(), top.values.tolist(), strict=True)]
    return predictions, thumbs


def write_csv(predictions: list[Prediction], class_names: tuple[str, ...], path: Path) -> None:
    """``path, class_1, probability_1, ..., class_k, probability_k``: one row per image."""
    top_k = len(predictions[0].classes)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", *[f"{column}_{rank}" for rank in range(1, top_k + 1)
                               for column in ("class", "probability")]])
    for prediction in predictions:
        ranked = zip(prediction.classes, prediction.probabilities, strict=True)
        writer.writerow([str(prediction.path), *[item for index, p in ranked for item in (class_names[index],
                                                                                            f"{p:.6f}")]])
    atomic_write_text(path, text.getvalue())


def _caption(draw: ImageDraw.ImageDraw, font, name: str, probability: float) -> str:
    """``name probability`` cut to fit under a thumbnail (the name shortened, never the probability)."""
    suffix = f" {probability:.2f}"
    limit = THUMB_SIDE - 2 * CAPTION_MARGIN
    while len(name) > 1 and draw.textlength(name + suffix, font=font) > limit:
        name = name[:-2] + "."
    return name + suffix


def write_contact_sheet(predictions: list[Prediction], thumbs: list[Image.Image], class_names: tuple[str, ...],
                        path: Path) -> None:
    """Thumbnails in rows of :data:`SHEET_COLUMNS`, each captioned with its top-1 class and probability."""
    font = ImageFont.load_default()
    tiles = []
    for prediction, thumb in zip(predictions, thumbs, strict=False):  # the thumbnails are the first predictions'
        tile = Image.new("RGB", (THUMB_SIDE, THUMB_SIDE + CAPTION_HEIGHT), WHITE)
        tile.paste(thumb, (0, 0))
        draw = ImageDraw.Draw(tile)
        caption = _caption(draw, font, class_names[prediction.classes[0]], prediction.probabilities[0])
        draw.text((CAPTION_MARGIN, THUMB_SIDE), caption, fill=BLACK, font=font)
        tiles.append(pil_to_tensor(tile))
    grid = make_grid(tiles, nrow=SHEET_COLUMNS, padding=GRID_PADDING, pad_value=WHITE[0])
    sheet = Image.fromarray(grid.permute(1, 2, 0).numpy())
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def predict(run: str, inputs: list[str], settings: PredictSettings | None = None, *, output: str | None = None,
            limit: int | None = None, prefer_ema: bool = True, model_name: str | None = None,
            device_name: str = "auto", overwrite: bool = False) -> PredictReport:
    """Classify the images ``inputs`` name (files and folders, the first ``limit``) with the run at ``run``;
    ``settings.top_k`` is capped at the run's class count."""
    settings = settings or PredictSettings()
    device = resolve_device(device_name, DistInfo())
    files = image_files(inputs, limit)
    folder = Path(output) if output else default_prediction_folder("classify", run)
    csv_path, sheet_path = claim_output(folder, files, overwrite)
    trained = load_trained(run, prefer_ema=prefer_ema, model_name=model_name)
    top_k = min(settings.top_k, trained.info.num_classes)
    predictions, thumbs = predict_images(trained, files, device, top_k, settings.batch_size)
    write_csv(predictions, trained.info.class_names, csv_path)
    write_contact_sheet(predictions, thumbs, trained.info.class_names, sheet_path)
    return PredictReport(csv_path, sheet_path, len(predictions), len(thumbs), top_k, trained.run.origin)
