"""Score a generator written by ``ascan gen-train``.

Class-conditional: classifier accuracy on requested classes + classifier-feature FID (+ tiny
Inception FID). Text-conditional: prompt-match score (class, brightness, size, all three) against
the same samples scored with shuffled prompts (chance control).

    .venv/bin/python benchmarks/gen_eval.py runs/gen_t2i --per-prompt 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ascan.atomic import atomic_write_text
from ascan.generate import captions
from ascan.generate.data import load_image_set, to_unit
from ascan.generate.quality import evaluate_class_conditional, evaluate_text, load_or_train_classifier
from ascan.generate.sample import load_generator, save_grid

PROMPT_GRID_ROW = 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--classifier", default="runs/gen_classifier.safetensors")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--per-prompt", type=int, default=8)
    p.add_argument("--n-inception", type=int, default=0)
    p.add_argument("--guidance-scale", "--cfg", type=float, default=None, dest="guidance_scale")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = load_generator(args.ckpt)
    classifier = load_or_train_classifier(Path(args.classifier))
    settings = gen.settings

    def sample(cond, seed):
        return gen.sample(cond, seed=seed, guidance_scale=args.guidance_scale)

    if settings.model.cond == "class":
        result = evaluate_class_conditional(sample, classifier, per_class=args.per_class,
                                            n_inception=args.n_inception)
    else:  # the caption thresholds of the run's own training images
        data = load_image_set(settings.data.dataset, settings.data.root, "train", settings.data.train_subset)
        thresholds = captions.AttributeThresholds.fit(to_unit(data.images), data.labels, data.num_classes)
        result = evaluate_text(sample, gen.text_table.lookup, classifier, thresholds, per_prompt=args.per_prompt)
        prompts = gen.text_table.lookup(torch.arange(gen.text_table.null_id))
        save_grid(sample(prompts, 0), Path(args.ckpt) / "prompts_grid.png", nrow=PROMPT_GRID_ROW)
    scale = args.guidance_scale if args.guidance_scale is not None else settings.sample.guidance_scale
    result.update(guidance_scale=scale, objective=settings.objective.name, model=settings.model.arch)
    atomic_write_text(Path(args.ckpt) / "eval.json", json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
