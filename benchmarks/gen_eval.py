"""Score a generator written by ``ascan gen-train``.

Class-conditional: classifier accuracy on requested classes + classifier-feature FID (+ tiny
Inception FID). Text-conditional: prompt-match score (class, brightness, size, all three) against
the same samples scored with shuffled prompts (chance control).

    .venv/bin/python benchmarks/gen_eval.py runs/gen_t2i --per-prompt 8
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from ascan.generate import captions
from ascan.generate.evaluate import evaluate_class_conditional, evaluate_text, load_or_train_classifier
from ascan.generate.train import load_generator, save_grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--classifier", default="runs/gen_classifier.safetensors")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--per-prompt", type=int, default=8)
    p.add_argument("--n-inception", type=int, default=0)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = load_generator(args.ckpt)
    classifier = load_or_train_classifier(Path(args.classifier))

    def sample(cond, seed):
        return gen.sample(cond, seed=seed, cfg_scale=args.cfg)

    if gen.cfg.cond == "class":
        result = evaluate_class_conditional(sample, classifier, per_class=args.per_class,
                                            n_inception=args.n_inception)
    else:
        thr = gen.meta["thresholds"]
        thresholds = captions.AttributeThresholds(torch.tensor(thr["brightness"]), torch.tensor(thr["size"]))
        result = evaluate_text(sample, gen.text_table.lookup, classifier, thresholds, per_prompt=args.per_prompt)
        save_grid(sample(gen.text_table.lookup(torch.arange(40)), 0), Path(args.ckpt) / "prompts_grid.png", nrow=4)
    result.update(step=gen.meta["step"], cfg_scale=args.cfg if args.cfg is not None else gen.cfg.cfg_scale,
                  objective=gen.cfg.objective, model=gen.cfg.model)
    out = Path(args.ckpt) / "eval.json"
    tmp = out.with_name("eval.json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
