"""Captions with checkable content for Fashion-MNIST text-to-image.

Each image gets ``"a {dark|bright} {small|large} {class}"``: brightness is the mean intensity of
the object's pixels, size is the fraction of the image the object covers; each is binarised at
its *per-class* median over the training set, so every (class, attribute) pair is half the data
and a random prompt is matched by chance 1/2 per attribute. The same measurements score
generated images (:func:`prompt_match`), which makes a GenEval-like check possible here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ascan.data.fashion_mnist import CLASSES

OBJECT_THRESHOLD = 0.1  # pixel intensity in [0, 1] above which a pixel belongs to the object
CLASS_WORDS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
BRIGHTNESS_WORDS = ("dark", "bright")
SIZE_WORDS = ("small", "large")
assert len(CLASS_WORDS) == len(CLASSES)


def measure(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(brightness, size) of images in [0, 1], shaped [N, H, W] or [N, 1, H, W]."""
    x = images.float().reshape(images.shape[0], -1)
    obj = x > OBJECT_THRESHOLD
    area = obj.float().mean(1)
    brightness = (x * obj).sum(1) / obj.sum(1).clamp_min(1)
    return brightness, area


@dataclass
class AttributeThresholds:
    brightness: torch.Tensor  # [num_classes] per-class medians
    size: torch.Tensor

    @staticmethod
    def fit(images: torch.Tensor, labels: torch.Tensor, num_classes: int = len(CLASSES)) -> AttributeThresholds:
        b, s = measure(images)
        return AttributeThresholds(
            torch.stack([b[labels == k].median() for k in range(num_classes)]),
            torch.stack([s[labels == k].median() for k in range(num_classes)]))

    def bins(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary attributes (1 = bright / large) relative to the thresholds of ``labels``' classes."""
        b, s = measure(images)
        return (b > self.brightness[labels]).long(), (s > self.size[labels]).long()


def caption(label: int, bright: int, large: int) -> str:
    return f"a {BRIGHTNESS_WORDS[bright]} {SIZE_WORDS[large]} {CLASS_WORDS[label]}"


def caption_id(label: torch.Tensor, bright: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
    """Index into :func:`all_captions` (class-major, then brightness, then size)."""
    return label * 4 + bright * 2 + large


def all_captions(num_classes: int = len(CLASSES)) -> list[str]:
    return [caption(k, b, s) for k in range(num_classes) for b in (0, 1) for s in (0, 1)]


def decode_caption_id(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return idx // 4, (idx // 2) % 2, idx % 2


def prompt_match(pred_labels: torch.Tensor, images: torch.Tensor, prompt_ids: torch.Tensor,
                 thresholds: AttributeThresholds) -> dict[str, float]:
    """Fractions of samples whose classifier label / brightness / size (and all three) match the prompt."""
    want_cls, want_bright, want_large = decode_caption_id(prompt_ids)
    # attributes are measured against the thresholds of the *requested* class
    bright, large = thresholds.bins(images, want_cls)
    ok_cls, ok_b, ok_s = pred_labels == want_cls, bright == want_bright, large == want_large
    return {"class": ok_cls.float().mean().item(), "brightness": ok_b.float().mean().item(),
            "size": ok_s.float().mean().item(), "all": (ok_cls & ok_b & ok_s).float().mean().item()}
