"""Named model sets for ``ascan bench --preset``: the baselines of the patent's Table 4 that timm has.

The paper's figures (resolution, params, MACs, A100 fp16 throughput at batch 1/16/64) live in
:mod:`ascan.paper`; a report shows them beside our measurement. FasterViT is not in timm; FastViT is
the nearest timm family and is marked as a stand-in. All models are built with
``pretrained=False``: benchmarking never downloads weights.
"""

from __future__ import annotations

from ascan.errors import UserError
from ascan.paper import paper_figures

# Choices of ascan bench's options, here so that its --help needs no torch (the runner imports them too).
FUSE_CHOICES = ("off", "on", "both")
# How a model runs in a low-precision dtype: under autocast (fp32 weights, cast per op), or with its weights and
# input cast to the dtype once (``model.to(torch.bfloat16)``, timm benchmark.py's ``--model-dtype``).
CASTS = ("autocast", "weights")
# Where and in what precision a model runs (``--runtime``, ``--precision``, or per model in ``--setup``):
# PyTorch eager (or compiled), or a converted graph in a deployment runtime (ascan.bench.runtimes).
RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")

# FasterViT is not in timm: FastViT, the nearest timm family, stands in at its own resolution. A stand-in
# is not the published model, so no published figure is shown beside it.
STAND_INS: dict[str, int] = {  # timm model -> its resolution
    "fastvit_sa36": 256,  # for FasterViT-1 (ascan.paper.BY_PAPER_NAME["FasterViT-1"])
    "fastvit_ma36": 256,  # for FasterViT-2
}


PRESETS: dict[str, tuple[str, ...]] = {
    "table4-tiny": (
        "ascan_tiny",
        "maxvit_tiny_tf_224",
        "coatnet_0_224",
        "fastvit_sa36",
        "swin_small_patch4_window7_224",
        "convnext_small",
        "tf_efficientnetv2_s",
    ),
    "table4-base": (
        "ascan_base",
        "maxvit_small_tf_224",
        "maxvit_base_tf_224",
        "coatnet_1_224",
        "coatnet_2_224",
        "fastvit_ma36",
        "convnext_base",
        "swin_base_patch4_window12_384",
        "deit_base_patch16_384",
        "vit_base_patch16_384",
        "tf_efficientnetv2_m",
        "nfnet_f0",
    ),
    "table4-large": (
        "ascan_large",
        "maxvit_large_tf_224",
        "coatnet_3_224",
        "convnext_large",
        "nfnet_f1",
        "tf_efficientnet_b6",
        "tf_efficientnet_b7",
    ),
    # The acceptance comparison for this repository's CPU machines (2 cores, fp32, 224).
    "cpu-check": ("ascan_tiny", "maxvit_tiny_tf_224", "swin_small_patch4_window7_224", "coatnet_0_224"),
    # Issue 28's CPU deployment comparison: the peers of the cpu-check, ConvNeXt-S and EfficientNetV2-S
    # (run with --runtime/--precision, or each model in its best runtime via --setup).
    "cpu-deploy": ("ascan_tiny", "convnext_small", "swin_small_patch4_window7_224", "maxvit_tiny_tf_224",
                   "coatnet_0_224", "tf_efficientnetv2_s"),
    # Tiny timm test networks: a seconds-long smoke run of the whole tool.
    "smoke": ("test_vit", "test_convnext", "test_efficientnet"),
}
PRESETS["table4"] = tuple(dict.fromkeys(PRESETS["table4-tiny"] + PRESETS["table4-base"] + PRESETS["table4-large"]))


def preset_models(name: str) -> tuple[str, ...]:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"--preset {name!r}: unknown preset; choose from {', '.join(sorted(PRESETS))}") from None


def native_resolution(model: str) -> int | None:
    """The published resolution of a model (a stand-in's own), None for models without a published row."""
    if model in STAND_INS:
        return STAND_INS[model]
    row = paper_figures(model)
    return row.resolution if row is not None else None

