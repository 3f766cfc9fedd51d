"""Sample quality of generators: class accuracy, classifier-feature FID, Inception FID, text prompt match.

(The training-time validation loss is the task's :meth:`~ascan.generate.task.GenerationTask.evaluate`;
this module scores finished generators, for ``ascan generate eval`` (:func:`evaluate_generator`),
``benchmarks/gen_eval.py`` and ``gen_compare.py``.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from ascan.atomic import save_safetensors
from ascan.data.fashion_mnist import CLASSES, load_fashion_mnist
from ascan.engine import load_model_state, load_weights_file
from ascan.generate import captions
from ascan.generate.choices import DEFAULT_N_REAL, DEFAULT_PER_CLASS, DEFAULT_PER_PROMPT
from ascan.generate.conditioning import Conditioning
from ascan.generate.data import load_image_set, to_unit
from ascan.generate.metrics import (
    ClassifierFeatures,
    FeatureClassifier,
    InceptionFeatures,
    classify,
    frechet_distance,
    inception_available,
    per_class_accuracy,
    train_classifier,
)

SampleFn = Callable[[Conditioning, int], torch.Tensor]  # (cond, seed) -> images in [0, 1]


def load_or_train_classifier(path: Path, epochs: int = 1) -> FeatureClassifier:
    """The FID feature network: trained here once (1 epoch, few minutes on CPU), cached as safetensors."""
    model = FeatureClassifier(num_classes=len(CLASSES))
    if path.is_file():
        load_model_state(model, load_weights_file(path), str(path))
        return model.eval()
    images, labels = load_fashion_mnist(split="train")
    model = train_classifier(images, labels, len(CLASSES), epochs=epochs)
    save_safetensors(model.state_dict(), path)
    return model.eval()


def real_test_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random Fashion-MNIST test images (float [0, 1], 32x32) and their labels: FID's real side."""
    images, labels = load_fashion_mnist(split="test")
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return to_unit(images[idx]), labels[idx]


def evaluate_class_conditional(sample: SampleFn, classifier: FeatureClassifier, *, per_class: int = 50,
                               n_real: int = 1000, n_inception: int = 0, seed: int = 0) -> dict:
    """Samples of every class the classifier knows, scored by its labels and by FID against real images."""
    num_classes = classifier.head.out_features
    labels = torch.arange(num_classes).repeat(per_class)
    start = time.perf_counter()
    fake = sample(Conditioning(labels=labels), seed)
    sample_seconds = time.perf_counter() - start
    pred = classify(classifier, fake)
    real, _ = real_test_images(n_real)
    result = {
        "n_samples": len(labels),
        "class_accuracy": (pred == labels).float().mean().item(),
        "per_class_accuracy": per_class_accuracy(pred, labels, num_classes),
        "fid_classifier": frechet_distance(ClassifierFeatures(classifier), real, fake),
        "sample_seconds": sample_seconds,
        "images_per_second": len(labels) / sample_seconds,
    }
    if n_inception and inception_available():
        inc = InceptionFeatures()
        result["fid_inception"] = frechet_distance(inc, real[:n_inception], fake[:n_inception], batch=25)
        result["n_inception"] = n_inception
    return result


def evaluate_text(sample: SampleFn, lookup: Callable[[torch.Tensor], Conditioning], classifier: FeatureClassifier,
                  thresholds: captions.AttributeThresholds, *, per_prompt: int = 10, seed: int = 0) -> dict:
    """Prompt-match score of samples, and the same score against shuffled prompts (chance control)."""
    n_prompts = len(captions.all_captions(classifier.head.out_features))
    ids = torch.arange(n_prompts).repeat(per_prompt)
    fake = sample(lookup(ids), seed)
    pred = classify(classifier, fake)
    shuffled = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed + 1))]
    return {"n_samples": len(ids), "match": captions.prompt_match(pred, fake, ids, thresholds),
            "shuffled_control": captions.prompt_match(pred, fake, shuffled, thresholds)}


def evaluate_generator(gen, classifier: FeatureClassifier, *, per_class: int = DEFAULT_PER_CLASS,
                       per_prompt: int = DEFAULT_PER_PROMPT, n_real: int = DEFAULT_N_REAL, n_inception: int = 0,
                       seed: int = 0, **sample_kwargs) -> dict:
    """The scores of a :class:`~ascan.generate.sample.TrainedGenerator`: class accuracy + classifier-feature FID
    (class models) or the prompt-match score (text models, captions thresholded on the run's training images).

    ``sample_kwargs`` go to its sampler (``steps``, ``guidance_scale``).
    """
    settings = gen.settings

    def sample(cond: Conditioning, sample_seed: int) -> torch.Tensor:
        return gen.sample(cond, seed=sample_seed, **sample_kwargs)

    if settings.model.cond == "class":
        return evaluate_class_conditional(sample, classifier, per_class=per_class, n_real=n_real,
                                          n_inception=n_inception, seed=seed)
    data = load_image_set(settings.data.dataset, settings.data.root, "train", settings.data.train_subset)
    thresholds = captions.AttributeThresholds.fit(to_unit(data.images), data.labels, data.num_classes)
    return evaluate_text(sample, gen.text_table.lookup, classifier, thresholds, per_prompt=per_prompt, seed=seed)


def format_result(result: dict) -> str:
    """What ``ascan generate eval`` prints: which weights, precision and sampler, then the scores."""
    head = (f"{result['run']} ({result['weights']} weights, {result['precision']}; {result['n_samples']} samples, "
            f"{result['steps']} {result['method']} steps, guidance {result['guidance_scale']:g})")
    if "match" not in result:
        lines = [head, f"  classifier-feature FID {result['fid_classifier']:.2f}  "
                       f"class accuracy {result['class_accuracy']:.3f}"]
        if "fid_inception" in result:
            lines.append(f"  Inception FID {result['fid_inception']:.2f} ({result['n_inception']} images a side)")
        lines += [f"  {name:<12} {acc:.3f}" for name, acc in zip(CLASSES, result["per_class_accuracy"], strict=False)]
        return "\n".join(lines)
    lines = [head, f"  {'prompt match':<14} {'samples':>8} {'shuffled':>8}"]
    lines += [f"  {key:<14} {value:>8.3f} {result['shuffled_control'][key]:>8.3f}"
              for key, value in result["match"].items()]
    return "\n".join(lines)
