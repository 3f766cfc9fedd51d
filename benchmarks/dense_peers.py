"""Patent Tables 8/9 in miniature: the ascan backbone against timm peers on the generated garment scenes.

Every backbone is trained from scratch by the real commands (``ascan segment train`` / ``ascan detect
train``) on the same schedule (the bundled configs, shortened by ``--seg-set`` / ``--det-set``), then the
trained models are measured side by side in this process: params, MACs of one 128-px image
(FlopCounterMode FLOPs / 2) and FPS of the whole segmenter / detector (batch 1, inference, the models
interleaved round by round so machine drift hits them alike), and the training throughput of one
optimiser step at the run's batch size and autocast setting, interleaved the same way — the fair basis
for "equal wall-clock" on a shared machine, where the runs' own times depend on what else ran. Quality is
the run's own final evaluation (``summary.json``); "train min" is the run's wall-clock as it happened.

The peers are timm's ResNet-18, ConvNeXt and Swin-T shapes narrowed to the slim ascan_nano's size
(about 2 M parameters, no pretrained weights exist offline). ascan_nano's stages reduce 2/4/8/16, so the
patent's S2-S4 already sit at strides 4/8/16; the reduction-32 peers take S1-S4 (4/8/16/32) for detection,
so every detector's finest map is at stride 4. smp reads every backbone's maps from stride 4 on.

    python benchmarks/dense_peers.py                          # both tasks, all peers (about an hour on 2 cores)
    python benchmarks/dense_peers.py --tasks segment --peers ascan resnet --reuse
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ascan.atomic import atomic_write_text
from ascan.bench.timing import Case, run_interleaved, throughput_ratio
from ascan.flops import count_flops

SLIM_ASCAN = {"widths": [16, 32, 64, 128], "stem_width": 16,
              "block_kwargs": {"T": {"head_dim": 16}, "C": {"expand_ratio": 2.0}}}
# name -> (timm model, backbone kwargs); the bundled configs' slim ascan_nano is the reference
PEERS = {
    "ascan": ("ascan_nano", SLIM_ASCAN),
    "resnet": ("resnet18", {"channels": [24, 48, 96, 192]}),
    "convnext": ("convnext_atto", {"dims": [24, 48, 96, 192], "depths": [2, 2, 6, 2]}),
    "swin": ("swin_tiny_patch4_window7_224",
             {"img_size": 128, "embed_dim": 24, "depths": [2, 2, 6, 2], "num_heads": [1, 2, 4, 8], "window_size": 4}),
}
# what the two bundled configs add to the slim ascan_nano: the segmenter keeps a 128-wide head, the detector
# none, and the detector's position tables are made for its 128-px input
ASCAN_TASK_KWARGS = {"segment": {"head_width": 128}, "detect": {"head_width": 0, "img_size": 128}}
SEG_SCHEDULE = ["optim.epochs=3"]
DET_SCHEDULE = ["optim.epochs=1", "data.train_subset=2000"]
IMAGE_SIZE = 128
MACS_PER_FLOP = 0.5
QUALITY = {"segment": ("test_miou", "ema_miou", "test_pixel_acc"), "detect": ("test_box_map", "test_mask_map")}


def overrides(task: str, peer: str) -> list[str]:
    """The ``--set`` items that put ``peer``'s backbone into ``task``'s bundled config (JSON is YAML)."""
    name, kwargs = PEERS[peer]
    if peer == "ascan":
        kwargs = {**kwargs, **ASCAN_TASK_KWARGS[task]}
    if task == "segment":
        return [f"model.backbone={name}", "model.kwargs=" + json.dumps(kwargs)]
    items = [f"model.backbone={name}", "model.backbone_kwargs=" + json.dumps(kwargs)]
    return items + ([] if peer == "ascan" else ["model.detector.levels=s1-s4"])


def train(task: str, peer: str, root: Path, schedule: list[str], reuse: bool) -> dict:
    run = root / f"{task}_{peer}"
    summary = run / "summary.json"
    if not (reuse and summary.is_file()):
        cmd = [sys.executable, "-c", "from ascan.cli import main; raise SystemExit(main())", task, "train",
               "--output", str(run), "--overwrite", "--no-progress", "--set", *overrides(task, peer), *schedule]
        print("$ ascan " + " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads(summary.read_text())


def load_trained(task: str, run: Path):
    if task == "segment":
        from ascan.segment.predict import load_trained as load
    else:
        from ascan.detect.predict import load_trained as load
    return load(run)


def forward_step(task: str, model: torch.nn.Module):
    image = torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    batch = [image] if task == "detect" else image[None]

    @torch.inference_mode()
    def step():
        return model(batch)

    return step


def synthetic_batch(task: str, batch_size: int, num_classes: int):
    """Random images with one square object each: the step's cost, not its loss, is what is timed."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    if task == "segment":
        return images, torch.randint(0, num_classes, (batch_size, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
    lo, hi = IMAGE_SIZE // 4, 3 * IMAGE_SIZE // 4
    masks = torch.zeros(1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    masks[:, lo:hi, lo:hi] = 1
    target = {"boxes": torch.tensor([[lo, lo, hi, hi]], dtype=torch.float32), "labels": torch.tensor([1]),
              "masks": masks}
    return list(images), [target] * batch_size


def train_step(task: str, trained, num_classes: int):
    """One optimiser step of the run's own batch size and autocast setting (AdamW: every run's optimiser)."""
    from ascan.engine.runtime import autocast_dtype

    model = copy.deepcopy(trained.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    images, targets = synthetic_batch(task, trained.cfg.data.batch_size, num_classes)
    dtype = autocast_dtype(trained.cfg.amp, torch.device("cpu"))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            if task == "segment":
                loss = F.cross_entropy(model(images).float(), targets)
            else:
                loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()

    return step, len(images)


def measure(task: str, root: Path, peers: list[str], rounds: int) -> dict[str, dict]:
    """Params, GMACs, inference FPS and training img/s (with ratios to the first peer), side by side."""
    infer, training, sizes = [], [], {}
    for peer in peers:
        trained = load_trained(task, root / f"{task}_{peer}")
        model = trained.model.eval()
        step = forward_step(task, model)
        sizes[peer] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                       "gmacs": count_flops(step) * MACS_PER_FLOP / 1e9}
        infer.append(Case(peer, step, 1))
        training.append(Case(peer, *train_step(task, trained, len(trained.class_names))))
    for key, cases in (("fps", infer), ("train_img_s", training)):
        results = run_interleaved(cases, warmup=2, iters=5 if key == "fps" else 2, repeats=rounds)
        for peer in peers:
            ratio = throughput_ratio(results[peer], results[peers[0]])
            sizes[peer].update({key: results[peer].img_per_s, key + "_ratio": ratio.median})
    return sizes


def table(task: str, peers: list[str], summaries: dict, sizes: dict) -> str:
    keys = QUALITY[task]
    lines = [f"| backbone | {' | '.join(keys)} | train min | params M | GMACs | FPS | FPS x {peers[0]} | "
             f"train img/s | train x {peers[0]} |", "| --- " * (len(keys) + 8) + "|"]
    for peer in peers:
        s, m = summaries[peer], sizes[peer]
        quality = " | ".join(f"{s[k]:.1f}" if s.get(k) is not None else "-" for k in keys)
        lines.append(f"| {PEERS[peer][0]} | {quality} | {s['wall_time_s'] / 60:.1f} | {m['params_m']:.2f} | "
                     f"{m['gmacs']:.2f} | {m['fps']:.1f} | {m['fps_ratio']:.2f} | {m['train_img_s']:.1f} | "
                     f"{m['train_img_s_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=tuple(QUALITY), default=list(QUALITY))
    parser.add_argument("--peers", nargs="+", choices=tuple(PEERS), default=list(PEERS), help="the first is the "
                        "reference of the FPS ratios")
    parser.add_argument("--root", type=Path, default=Path("runs/peers"), help="where the runs go")
    parser.add_argument("--seg-set", nargs="*", default=SEG_SCHEDULE, help="schedule overrides for segment")
    parser.add_argument("--det-set", nargs="*", default=DET_SCHEDULE, help="schedule overrides for detect")
    parser.add_argument("--reuse", action="store_true", help="keep runs that already have a summary.json")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved FPS rounds (>= 1)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    for task in args.tasks:
        schedule = args.seg_set if task == "segment" else args.det_set
        summaries = {peer: train(task, peer, args.root, schedule, args.reuse) for peer in args.peers}
        sizes = measure(task, args.root, args.peers, args.rounds)
        print(f"\n{task} on the garment scenes ({' '.join(schedule)}), FPS at {IMAGE_SIZE} px, batch 1, "
              f"{report['threads']} threads\n" + table(task, args.peers, summaries, sizes), flush=True)
        report[task] = {"schedule": schedule, "summaries": summaries, "sizes": sizes}
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
