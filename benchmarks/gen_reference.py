"""Reference points for the generation metrics: the FID classifier on real test images, real-vs-real FID.

    .venv/bin/python benchmarks/gen_reference.py
"""
from pathlib import Path

import torch

from ascan.data.fashion_mnist import load_fashion_mnist
from ascan.generate.data import to_unit
from ascan.generate.evaluate import load_or_train_classifier, test_images
from ascan.generate.metrics import ClassifierFeatures, classify, frechet_distance

torch.set_num_threads(1)
clf = load_or_train_classifier(Path("runs/gen_classifier.safetensors"))
imgs, labels = load_fashion_mnist(split="test")
pred = classify(clf, to_unit(imgs))
print("classifier test accuracy", (pred == labels).float().mean().item())
real, _ = test_images(1000)
tr, _ = load_fashion_mnist(split="train")
idx = torch.randperm(tr.shape[0], generator=torch.Generator().manual_seed(1))[:500]
fid = frechet_distance(ClassifierFeatures(clf), real, to_unit(tr[idx]))
print("classifier-feature FID, real train 500 vs real test 1000:", fid)
