"""The generator's named choices and ranges, in a module that imports no torch: every ``--help`` reads them here."""

from __future__ import annotations

from ascan.config import Range

DATASETS = ("fashion_mnist",)
ARCHS = ("unet", "dit")
CONDITIONS = ("class", "text")
TEXT_ENCODERS = ("minilm", "hash")
OBJECTIVES = ("flow", "ddpm")
TIME_SAMPLINGS = ("uniform", "logit_normal")
SAMPLE_METHODS = ("euler", "heun")  # flow models; DDPM models always sample with DDIM
GUIDANCE_RANGE = Range(0.0, 100.0)  # classifier-free guidance scale; 1 = off, 0 = unconditional
# ``ascan generate eval``'s defaults (benchmarks/gen_eval.py's): samples per class / caption, real test images
DEFAULT_PER_CLASS, DEFAULT_PER_PROMPT, DEFAULT_N_REAL = 30, 8, 1000
DEFAULT_CLASSIFIER = "runs/gen_classifier.safetensors"  # the FID feature network, trained once and cached
