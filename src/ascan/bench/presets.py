"""Named model sets for ``ascan bench --preset``: the baselines of the patent's Table 4 that timm has.

Each entry keeps the paper's figures (resolution, params, MACs, A100 fp16 throughput at batch
1/16/64) so a report can show them beside our measurement. FasterViT is not in timm; FastViT is
the nearest timm family and is marked as a stand-in. All models are built with
``pretrained=False``: benchmarking never downloads weights.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperEntry:
    """One timm model standing for one row of Table 4 (``paper_name`` None: not in the table)."""

    model: str
    paper_name: str | None
    resolution: int
    params_m: float | None = None
    macs_g: float | None = None
    a100_b1: float | None = None
    a100_b16: float | None = None
    a100_b64: float | None = None
    note: str = ""


_FASTVIT_NOTE = "FastViT: nearest timm family to FasterViT (not in timm)"

TABLE4: dict[str, PaperEntry] = {
    e.model: e
    for e in [
        PaperEntry("ascan_tiny", "AsCAN-T", 224, 55, 7.7, 199, 3224, 4295),
        PaperEntry("ascan_base", "AsCAN-B", 224, 98, 16.7, 113, 1878, 2393),
        PaperEntry("ascan_large", "AsCAN-L", 224, 173, 30.7, 120, 1381, 1617),
        PaperEntry("tf_efficientnet_b6", "EfficientNet-B6", 528, 43, 19.0, 88, 529, 589),
        PaperEntry("tf_efficientnet_b7", "EfficientNet-B7", 600, 66, 37.0, 72, 321, 350),
        PaperEntry("nfnet_f0", "NFNet-F0", 256, 72, 12.4, 199, 2470, 3348),
        PaperEntry("nfnet_f1", "NFNet-F1", 320, 132, 35.5, 106, 998, 1192),
        PaperEntry("tf_efficientnetv2_s", "EfficientNetV2-S", 384, 24, 8.8, 112, 1884, 2744),
        PaperEntry("tf_efficientnetv2_m", "EfficientNetV2-M", 480, 55, 24.0, 84, 918, 1094),
        PaperEntry("convnext_small", "ConvNeXt-S", 224, 50, 8.7, 174, 2291, 2889),
        PaperEntry("convnext_base", "ConvNeXt-B", 224, 89, 15.4, 167, 1760, 2073),
        PaperEntry("convnext_large", "ConvNeXt-L", 224, 198, 34.4, 168, 1045, 1127),
        PaperEntry("vit_base_patch16_384", "ViT-B/16", 384, 86, 55.4, 212, 1006, 1266),
        PaperEntry("deit_base_patch16_384", "DeiT-B", 384, 86, 55.4, 189, 1058, 1192),
        PaperEntry("swin_small_patch4_window7_224", "Swin-S", 224, 50, 8.7, 50, 841, 2221),
        PaperEntry("swin_base_patch4_window12_384", "Swin-B", 384, 88, 47.0, 51, 458, 486),
        PaperEntry("coatnet_0_224", "CoAtNet-0", 224, 25, 4.2, 214, 3537, 5221),
        PaperEntry("coatnet_1_224", "CoAtNet-1", 224, 42, 8.4, 141, 2221, 2907),
        PaperEntry("coatnet_2_224", "CoAtNet-2", 224, 75, 15.7, 133, 1718, 2040),
        PaperEntry("coatnet_3_224", "CoAtNet-3", 224, 168, 34.7, 132, 1085, 1105),
        PaperEntry("maxvit_tiny_tf_224", "MaxViT-T", 224, 31, 5.6, 73, 1098, 2756),
        PaperEntry("maxvit_small_tf_224", "MaxViT-S", 224, 69, 11.7, 70, 1019, 1775),
        PaperEntry("maxvit_base_tf_224", "MaxViT-B", 224, 120, 23.4, 34, 507, 1012),
        PaperEntry("maxvit_large_tf_224", "MaxViT-L", 224, 212, 43.9, 34, 544, 759),
        # FasterViT-1/2/3 (53M/5.3G, 76M/8.7G, 160M/18.2G) stand-ins:
        PaperEntry("fastvit_sa36", None, 256, note=_FASTVIT_NOTE + "; cf. FasterViT-1 1123 img/s @B16"),
        PaperEntry("fastvit_ma36", None, 256, note=_FASTVIT_NOTE + "; cf. FasterViT-2 1112 img/s @B16"),
    ]
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
    # Tiny timm test networks: a seconds-long smoke run of the whole tool.
    "smoke": ("test_vit", "test_convnext", "test_efficientnet"),
}
PRESETS["table4"] = tuple(dict.fromkeys(PRESETS["table4-tiny"] + PRESETS["table4-base"] + PRESETS["table4-large"]))


def preset_models(name: str) -> tuple[str, ...]:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}") from None


def native_resolution(model: str) -> int | None:
    """The Table-4 resolution of a preset model, None for models not in Table 4."""
    entry = TABLE4.get(model)
    return entry.resolution if entry is not None else None
