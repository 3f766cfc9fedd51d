"""Memory and step-time model of AsCAN-T/B/L at the paper's ImageNet setting (batch 4096 on 64 GPUs), from the
models' own numbers (notes/scale.md explains each line).

Measured here, on the CPU (no GPU needed):

* parameters: ``timm.create_model(name)``;
* activation memory per image: the bytes autograd keeps for the backward pass, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` over one training-mode forward at ``--size`` px (unique storages,
  parameters excluded), at batch 1 and 2: the difference is the per-image figure, what stays is per-step (under
  autocast, the bf16 copies of the weights). Once plain, once with ``model.set_grad_checkpointing(True)``
  (timm's ``checkpoint_seq``, run reentrant so what it keeps, each block's input, passes through the hooks),
  in fp32 and under bf16 autocast. Checkpointing recomputes one block at a time in the backward pass: the
  largest block's own activations (``--peak``) come on top while it runs.
* MACs: the README's figures at 224 (``--count-macs`` counts them with ``ascan.flops.count_macs`` instead).

Assumed (options): A100 bf16 dense peak 312 TFLOP/s at 40 % model-FLOP utilisation, 25 GB/s per GPU between
nodes (one 200 Gb/s HDR InfiniBand port per GPU, as a DGX A100), a ring all-reduce of fp32 gradients.

Usage::

    python benchmarks/scale_model.py --models ascan_tiny ascan_base ascan_large --out /tmp/scale_model.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import asdict, dataclass

import timm
import torch
from timm.layers import set_reentrant_ckpt

import ascan  # noqa: F401  (registers the models in timm)
from ascan.atomic import atomic_write_text

README_GMACS = {"ascan_tiny": 10.30, "ascan_base": 19.71, "ascan_large": 36.35}  # at 224, README's model table
IMAGENET_TRAIN = 1_281_167
GIB, GB = 2**30, 1e9
FP32 = 4
ADAM_MOMENTS = 2
FLOPS_PER_MAC = 2
TRAIN_PASSES = 3  # forward + backward (the backward costs about twice the forward)
CHECKPOINT_PASSES = 4  # ... + the recomputed forward


@dataclass
class Activations:
    """Bytes autograd keeps: ``per_image`` grows with the batch, ``fixed`` does not (autocast's weight copies)."""

    per_image: float
    fixed: float


def saved_bytes(model: torch.nn.Module, images: torch.Tensor, bf16: bool) -> tuple[int, list[int]]:
    """(bytes kept for backward by one forward, each block's share of them)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    block_bytes = []

    def before(*_):
        block_bytes.append(sum(seen.values()))

    def after(*_):
        block_bytes[-1] = sum(seen.values()) - block_bytes[-1]

    blocks = [block for stage in model.stages for block in stage.blocks]
    handles = [h for b in blocks for h in (b.register_forward_pre_hook(before), b.register_forward_hook(after))]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return sum(seen.values()), block_bytes


def activations(model: torch.nn.Module, size: int, bf16: bool, checkpointing: bool) -> tuple[Activations, float]:
    """Per-image and fixed saved bytes (from batches 1 and 2), and the largest block's per-image share."""
    model.set_grad_checkpointing(checkpointing)
    one, blocks_one = saved_bytes(model, torch.randn(1, 3, size, size), bf16)
    two, blocks_two = saved_bytes(model, torch.randn(2, 3, size, size), bf16)
    largest_block = max((b2 - b1 for b1, b2 in zip(blocks_one, blocks_two, strict=True)), default=0)
    return Activations(two - one, 2 * one - two), largest_block


def measure(name: str, size: int, count_macs: bool) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name).train()
    params = sum(p.numel() for p in model.parameters())
    row: dict = {"model": name, "params": params}
    if count_macs:
        from ascan.flops import count_macs as count

        row["gmacs"] = count(model, (3, size, size)) / 1e9
        model.train()
    else:
        row["gmacs"] = README_GMACS[name] * (size / 224) ** 2
    set_reentrant_ckpt(True)
    for bf16 in (False, True):
        for checkpointing in (False, True):
            act, block_peak = activations(model, size, bf16, checkpointing)
            key = f"{'bf16' if bf16 else 'fp32'}_{'ckpt' if checkpointing else 'plain'}"
            row[key] = asdict(act)
            if not checkpointing:
                row[f"{key}_largest_block"] = block_peak
    return row


def plan(row: dict, args) -> dict:
    """Memory per GPU (bf16 autocast, AdamW, DDP, EMA) and step time at the assumed utilisation."""
    p, batch = row["params"], args.global_batch // args.gpus
    state = {"weights fp32": FP32 * p, "gradients fp32": FP32 * p, "DDP buckets fp32": FP32 * p,
             "AdamW moments fp32": ADAM_MOMENTS * FP32 * p, "EMA weights fp32": FP32 * p}
    plain, ckpt = row["bf16_plain"], row["bf16_ckpt"]
    act_plain = batch * plain["per_image"] + plain["fixed"]
    act_ckpt = batch * (ckpt["per_image"] + row["bf16_plain_largest_block"]) + ckpt["fixed"]
    flops_image = FLOPS_PER_MAC * row["gmacs"] * 1e9
    rate = args.peak_tflops * 1e12 * args.mfu
    compute_plain = batch * TRAIN_PASSES * flops_image / rate
    compute_ckpt = batch * CHECKPOINT_PASSES * flops_image / rate
    ring = 2 * (args.gpus - 1) / args.gpus
    allreduce_bytes = ring * FP32 * p
    allreduce_s = allreduce_bytes / (args.link_gbs * GB)
    steps = IMAGENET_TRAIN // args.global_batch
    return {"per_gpu_batch": batch, "state_bytes": state, "state_total": sum(state.values()),
            "activations_plain": act_plain, "activations_ckpt": act_ckpt,
            "total_plain": sum(state.values()) + act_plain, "total_ckpt": sum(state.values()) + act_ckpt,
            "compute_s_plain": compute_plain, "compute_s_ckpt": compute_ckpt,
            "allreduce_bytes_per_gpu": allreduce_bytes, "allreduce_s": allreduce_s,
            "step_s_overlapped": max(compute_plain, allreduce_s), "step_s_serial": compute_plain + allreduce_s,
            "steps_per_epoch": steps, "epoch_s": steps * max(compute_plain, allreduce_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(README_GMACS))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--global-batch", type=int, default=4096)
    p.add_argument("--gpus", type=int, default=64)
    p.add_argument("--peak-tflops", type=float, default=312.0, help="bf16 dense peak per GPU (A100: 312)")
    p.add_argument("--mfu", type=float, default=0.40, help="model-FLOP utilisation assumed")
    p.add_argument("--link-gbs", type=float, default=25.0, help="GB/s per GPU between nodes (200 Gb/s HDR)")
    p.add_argument("--count-macs", action="store_true", help="count MACs (ascan.flops) instead of the README's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write every figure as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        row = measure(name, args.size, args.count_macs)
        row["plan"] = plan(row, args)
        rows.append(row)
    batch = args.global_batch // args.gpus
    print(f"global batch {args.global_batch} on {args.gpus} GPUs (per-GPU batch {batch}), {args.size} px; "
          f"{args.peak_tflops:.0f} TFLOP/s at {args.mfu:.0%} MFU; ring all-reduce of fp32 gradients at "
          f"{args.link_gbs:.0f} GB/s per GPU\n")
    print("| model | params | GMACs | act/img fp32 | act/img fp32 ckpt | act/img bf16 | act/img bf16 ckpt "
          "| state/GPU | act/GPU bf16 | act/GPU bf16 ckpt | total/GPU | total/GPU ckpt |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        q = row["plan"]
        mib = [row[k]["per_image"] / 2**20 for k in ("fp32_plain", "fp32_ckpt", "bf16_plain", "bf16_ckpt")]
        gib = [q[k] / GIB for k in ("state_total", "activations_plain", "activations_ckpt", "total_plain",
                                    "total_ckpt")]
        print(f"| {row['model']} | {row['params'] / 1e6:.2f}M | {row['gmacs']:.2f} | "
              + " | ".join(f"{v:.0f} MiB" for v in mib) + " | " + " | ".join(f"{v:.1f} GiB" for v in gib) + " |")
    print("\n| model | compute/step | compute/step ckpt | all-reduce/GPU/step | all-reduce time | step (overlapped) "
          "| step (serial) | steps/epoch | epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        q = row["plan"]
        print(f"| {row['model']} | {q['compute_s_plain'] * 1e3:.0f} ms | {q['compute_s_ckpt'] * 1e3:.0f} ms | "
              f"{q['allreduce_bytes_per_gpu'] / GB:.2f} GB | {q['allreduce_s'] * 1e3:.0f} ms | "
              f"{q['step_s_overlapped'] * 1e3:.0f} ms | {q['step_s_serial'] * 1e3:.0f} ms | {q['steps_per_epoch']} | "
              f"{q['epoch_s']:.0f} s |")
    if args.out:
        atomic_write_text(args.out, json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
