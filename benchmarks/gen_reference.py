"""Reference points for the generation metrics: the FID classifier on real test images, real-vs-real FID.

    .venv/bin/python benchmarks/gen_reference.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from ascan.data.fashion_mnist import load_fashion_mnist
from ascan.generate.data import to_unit
from ascan.generate.metrics import ClassifierFeatures, classify, frechet_distance
from ascan.generate.quality import load_or_train_classifier, real_test_images

N_REAL_TEST, N_REAL_TRAIN = 1000, 500


def main() -> None:
    torch.set_num_threads(1)
    clf = load_or_train_classifier(Path("runs/gen_classifier.safetensors"))
    imgs, labels = load_fashion_mnist(split="test")
    pred = classify(clf, to_unit(imgs))
    print("classifier test accuracy", (pred == labels).float().mean().item())
    real, _ = real_test_images(N_REAL_TEST)
    train_images, _ = load_fashion_mnist(split="train")
    idx = torch.randperm(train_images.shape[0], generator=torch.Generator().manual_seed(1))[:N_REAL_TRAIN]
    fid = frechet_distance(ClassifierFeatures(clf), real, to_unit(train_images[idx]))
    print(f"classifier-feature FID, real train {N_REAL_TRAIN} vs real test {N_REAL_TEST}:", fid)


if __name__ == "__main__":
    main()
