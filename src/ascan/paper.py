"""Published figures of every model this package builds or benchmarks against, in one place.

One :class:`PaperFigures` row per row of a published table, with the registered timm names that
implement it (ours and timm's own: the CoAtNet rows of the AsCAN patent's Table 4 stand for both
``ascan_coatnet_*`` and timm's ``coatnet_*_224``). :func:`paper_figures` looks a model up by name.
``ascan info``, ``ascan bench`` and the tests read these; nothing else repeats them.

MACs are multiply-accumulates at ``resolution`` (fvcore's count). The NeoNeXt paper prints its
column as "GFLOPs", but those are fvcore counts too, i.e. MACs: ConvNeXt-T's 4.5 "GFLOPs" in the same
table is ConvNeXt-T's MAC count, and FlopCounterMode's FLOPs / 2 of our NeoNeXt land within 0.5 %.
"""

from __future__ import annotations

from dataclasses import dataclass

PATENT_TABLE3 = "AsCAN patent, Table 3"
PATENT_TABLE4 = "AsCAN patent, Table 4"
NEONEXT_TABLE1 = "NeoNeXt paper (arXiv:2403.11251), Table 1"
NEONEXT_GFLOPS_NOTE = "published as 'GFLOPs': fvcore counts, i.e. MACs"


@dataclass(frozen=True)
class PaperFigures:
    """One published row: params (M), MACs (G) at ``resolution``, A100 fp16 img/s at batch 1/16/64."""

    paper_name: str
    source: str
    models: tuple[str, ...]
    resolution: int = 224
    params_m: float | None = None
    macs_g: float | None = None
    a100_b1: float | None = None
    a100_b16: float | None = None
    a100_b64: float | None = None
    note: str = ""


ROWS: tuple[PaperFigures, ...] = (
    # AsCAN (patent Table 4)
    PaperFigures("AsCAN-T", PATENT_TABLE4, ("ascan_tiny",), 224, 55, 7.7, 199, 3224, 4295),
    PaperFigures("AsCAN-B", PATENT_TABLE4, ("ascan_base",), 224, 98, 16.7, 113, 1878, 2393),
    PaperFigures("AsCAN-L", PATENT_TABLE4, ("ascan_large",), 224, 173, 30.7, 120, 1381, 1617),
    # Block distributions at Tiny widths (patent Table 3: params only; C1 is AsCAN-T)
    PaperFigures("C1", PATENT_TABLE3, ("ascan_t_c1",), params_m=55),
    PaperFigures("C2", PATENT_TABLE3, ("ascan_t_c2",), params_m=73),
    PaperFigures("C3", PATENT_TABLE3, ("ascan_t_c3",), params_m=41),
    PaperFigures("C4", PATENT_TABLE3, ("ascan_t_c4",), params_m=50),
    PaperFigures("C5", PATENT_TABLE3, ("ascan_t_c5",), params_m=95),
    PaperFigures("C6", PATENT_TABLE3, ("ascan_t_c6",), params_m=51),
    PaperFigures("C7", PATENT_TABLE3, ("ascan_t_c7",), params_m=42),
    PaperFigures("C8", PATENT_TABLE3, ("ascan_t_c8",), params_m=34),
    PaperFigures("C9", PATENT_TABLE3, ("ascan_t_c9",), params_m=30),
    PaperFigures("C10", PATENT_TABLE3, ("ascan_t_c10",), params_m=72),
    # NeoNeXt (its paper's Table 1, at 224)
    PaperFigures("NeoNeXt-T", NEONEXT_TABLE1, ("neonext_tiny",), 224, 27.7, 4.40, note=NEONEXT_GFLOPS_NOTE),
    PaperFigures("NeoNeXt-S", NEONEXT_TABLE1, ("neonext_small",), 224, 49.6, 8.60, note=NEONEXT_GFLOPS_NOTE),
    PaperFigures("NeoNeXt-B", NEONEXT_TABLE1, ("neonext_base",), 224, 87.3, 15.19, note=NEONEXT_GFLOPS_NOTE),
    # The baselines of patent Table 4 that timm has
    PaperFigures("CoAtNet-0", PATENT_TABLE4, ("ascan_coatnet_0", "coatnet_0_224"), 224, 25, 4.2, 214, 3537, 5221),
    PaperFigures("CoAtNet-1", PATENT_TABLE4, ("ascan_coatnet_1", "coatnet_1_224"), 224, 42, 8.4, 141, 2221, 2907),
    PaperFigures("CoAtNet-2", PATENT_TABLE4, ("ascan_coatnet_2", "coatnet_2_224"), 224, 75, 15.7, 133, 1718, 2040),
    PaperFigures("CoAtNet-3", PATENT_TABLE4, ("ascan_coatnet_3", "coatnet_3_224"), 224, 168, 34.7, 132, 1085, 1105),
    PaperFigures("EfficientNet-B6", PATENT_TABLE4, ("tf_efficientnet_b6",), 528, 43, 19.0, 88, 529, 589),
    PaperFigures("EfficientNet-B7", PATENT_TABLE4, ("tf_efficientnet_b7",), 600, 66, 37.0, 72, 321, 350),
    PaperFigures("NFNet-F0", PATENT_TABLE4, ("nfnet_f0",), 256, 72, 12.4, 199, 2470, 3348),
    PaperFigures("NFNet-F1", PATENT_TABLE4, ("nfnet_f1",), 320, 132, 35.5, 106, 998, 1192),
    PaperFigures("EfficientNetV2-S", PATENT_TABLE4, ("tf_efficientnetv2_s",), 384, 24, 8.8, 112, 1884, 2744),
    PaperFigures("EfficientNetV2-M", PATENT_TABLE4, ("tf_efficientnetv2_m",), 480, 55, 24.0, 84, 918, 1094),
    PaperFigures("ConvNeXt-S", PATENT_TABLE4, ("convnext_small",), 224, 50, 8.7, 174, 2291, 2889),
    PaperFigures("ConvNeXt-B", PATENT_TABLE4, ("convnext_base",), 224, 89, 15.4, 167, 1760, 2073),
    PaperFigures("ConvNeXt-L", PATENT_TABLE4, ("convnext_large",), 224, 198, 34.4, 168, 1045, 1127),
    PaperFigures("ViT-B/16", PATENT_TABLE4, ("vit_base_patch16_384",), 384, 86, 55.4, 212, 1006, 1266),
    PaperFigures("DeiT-B", PATENT_TABLE4, ("deit_base_patch16_384",), 384, 86, 55.4, 189, 1058, 1192),
    PaperFigures("Swin-S", PATENT_TABLE4, ("swin_small_patch4_window7_224",), 224, 50, 8.7, 50, 841, 2221),
    PaperFigures("Swin-B", PATENT_TABLE4, ("swin_base_patch4_window12_384",), 384, 88, 47.0, 51, 458, 486),
    PaperFigures("MaxViT-T", PATENT_TABLE4, ("maxvit_tiny_tf_224",), 224, 31, 5.6, 73, 1098, 2756),
    PaperFigures("MaxViT-S", PATENT_TABLE4, ("maxvit_small_tf_224",), 224, 69, 11.7, 70, 1019, 1775),
    PaperFigures("MaxViT-B", PATENT_TABLE4, ("maxvit_base_tf_224",), 224, 120, 23.4, 34, 507, 1012),
    PaperFigures("MaxViT-L", PATENT_TABLE4, ("maxvit_large_tf_224",), 224, 212, 43.9, 34, 544, 759),
    # Not in timm: no model implements them (ascan bench uses FastViT as the nearest stand-in)
    PaperFigures("FasterViT-1", PATENT_TABLE4, (), 224, 53, 5.3, 67, 1123, 4106),
    PaperFigures("FasterViT-2", PATENT_TABLE4, (), 224, 76, 8.7, 64, 1112, 4376),
    PaperFigures("FasterViT-3", PATENT_TABLE4, (), 224, 160, 18.2, 46, 831, 3131),
)

PAPER: dict[str, PaperFigures] = {model: row for row in ROWS for model in row.models}
BY_PAPER_NAME: dict[str, PaperFigures] = {row.paper_name: row for row in ROWS}


def paper_figures(model: str) -> PaperFigures | None:
    """The published row that registered model ``model`` implements, None if there is none."""
    return PAPER.get(model)


__all__ = ["BY_PAPER_NAME", "PAPER", "PaperFigures", "ROWS", "paper_figures"]
