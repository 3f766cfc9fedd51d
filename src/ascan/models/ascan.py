"""AsCAN: asymmetric convolution-attention networks (patent Tables 3 and 5), and the one model skeleton
that CoAtNet and NeoNeXt are built on too.

A stem, four stages written in the layout grammar (``"CC-CCCT-CCTT-CTTT"``), and a classifier. Reads
top to bottom: config, the model, checkpoint helpers, registered variants.

AsCAN's stem is two 3x3 convolutions (the first with stride 2, BN + GELU between them); every stage
opens with a stride-2 block that changes the width; the classifier projects with a 1x1 conv + BN + GELU,
average-pools and applies a linear layer (Table 5, S5). The 1x1 head conv lives in
``forward_features`` (as in timm's EfficientNet), so ``num_features`` is the head width. The other
families switch parts through :class:`AscanCfg`: a space-to-depth stem and a final BatchNorm (NeoNeXt),
a LayerNorm on the pooled features (CoAtNet), no head projection (both).
"""


import numbers
import re
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, LayerNorm2d, NormMlpClassifierHead, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from ascan.layers.conv_bn import ConvBN
from ascan.layers.registry import get_block
from ascan.layers.rel_pos import RelPosBiasTable, resize_rel_pos_table
from ascan.layers.stem import StemKind, check_input_size, create_stem
from ascan.layout import Layout, format_layout, parse_layout, validate_widths

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AscanCfg:
    """Architecture of one network of the AsCAN skeleton (AsCAN, CoAtNet and NeoNeXt are all one).

    ``head_width=0`` drops the 1x1 head projection (pool the last stage directly).
    ``block_kwargs`` maps a block letter to extra constructor arguments (e.g. ``{"T": {"head_dim": 16}}``);
    ``stage_block_kwargs`` does the same per stage (e.g. ``({"C": {"expand_ratio": 1.0}},)`` for an
    EfficientNetV2-like first stage: an experiment, not the paper's models).
    ``stem_stride`` and ``stage_strides`` set the downsampling; the product is the model's reduction.
    ``stem`` names the stem (:data:`ascan.layers.stem.STEMS`): ``"conv"``, two 3x3 convolutions, or
    ``"patch"``, space-to-depth by ``stem_stride`` + 1x1 conv + BN.
    ``final_norm`` puts a BatchNorm on the last stage's output (``norm_pre``: NeoNeXt); ``head_norm`` a
    LayerNorm on the pooled features before the classifier (timm's ``NormMlpClassifierHead``: CoAtNet).
    ``strict_input_size`` rejects input sides that are not multiples of the reduction (a ``ValueError``
    from the stem, so on every path: ``forward``, ``forward_intermediates``, ``features_only``, FX);
    ``False`` for models whose stem and blocks pad any size (NeoNeXt: maps of ``ceil(side / stride)``).
    ``compile_static_size`` makes ``torch.compile`` build one static graph per input size instead of a
    dynamic-shape one (:func:`ascan.layers.stem.specialise_size`; NeoNeXt, whose dynamic graph compiles ~20x slower).
    """

    layout: str = "CC-CCCT-CCTT-CTTT"
    widths: tuple[int, ...] = (96, 192, 384, 768)
    stem_width: int = 64
    head_width: int = 512
    stem_stride: int = 2
    stage_strides: tuple[int, ...] = (2, 2, 2, 2)
    block_kwargs: dict[str, dict] = field(default_factory=dict)
    stage_block_kwargs: tuple[dict[str, dict], ...] = ()
    stem: StemKind = "conv"
    final_norm: bool = False
    head_norm: bool = False
    strict_input_size: bool = True
    compile_static_size: bool = False

    def kwargs_for_stage(self, index: int) -> dict[str, dict]:
        """Per-letter block kwargs of one stage: ``block_kwargs`` updated by ``stage_block_kwargs[index]``."""
        stage = self.stage_block_kwargs[index] if index < len(self.stage_block_kwargs) else {}
        letters = set(self.block_kwargs) | set(stage)
        return {k: {**self.block_kwargs.get(k, {}), **stage.get(k, {})} for k in letters}

    @property
    def stages(self) -> Layout:
        return parse_layout(self.layout)

    @property
    def reduction(self) -> int:
        r = self.stem_stride
        for s in self.stage_strides:
            r *= s
        return r


TABLE5 = {
    "tiny": AscanCfg("CC-CCCT-CCTT-CTTT", (96, 192, 384, 768), 64, 512),
    "base": AscanCfg("CC-C4T2-C7T7-CTTT", (96, 192, 384, 768), 64, 768),
    "large": AscanCfg("CC-C4T2-C7T7-CTTT", (128, 256, 512, 1024), 128, 1024),
}

# Patent Table 3: block distributions at Tiny widths (C1 is AsCAN-T).
TABLE3_LAYOUTS = {
    "c1": "CC-CCCT-CCTT-CTTT",
    "c2": "CC-CCCT-CCTT-CCTT",
    "c3": "CC-CCCT-CCTT-TTTT",
    "c4": "CC-CCCT-CCCC-TTTT",
    "c5": "CC-CCCT-CCCT-CCCT",
    "c6": "CC-CCCC-CCCC-TTTT",
    "c7": "CC-CCCC-CCTT-TTTT",
    "c8": "CC-CCCC-TTTT-TTTT",
    "c9": "CC-TTTT-TTTT-TTTT",
    "c10": "CC-CCTT-CCTT-CCTT",
}

# Small-image variant for 28-64 px inputs (Fashion-MNIST at 32): stride-2 stem, no downsampling
# at the first stage, total reduction 16, so a 32 px input keeps a 16x16 map in stage 1.
NANO = AscanCfg("CC-CCCT-CCTT-CTTT", (24, 48, 96, 192), 16, 192, stem_stride=2, stage_strides=(1, 2, 2, 2),
                block_kwargs={"T": {"head_dim": 16}})

HEAD_NORM_EPS = 1e-5  # nn.LayerNorm's default, as CoAtNet's head had before timm's head class (timm: 1e-6)
INIT_STD = 0.02  # trunc-normal std of linear layers (timm's ViT/CoAtNet convention)

# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


class AscanStage(nn.Module):
    """One stage: blocks named by layout letters; the first one takes the stage's stride."""

    def __init__(self, letters: tuple[str, ...], in_chs: int, out_chs: int, stride: int,
                 feat_size: tuple[int, int], drop_path: list[float], block_kwargs: dict[str, dict]):
        super().__init__()
        self.grad_checkpointing = False
        blocks = []
        for i, letter in enumerate(letters):
            spec = get_block(letter)
            blocks.append(spec.cls(in_chs if i == 0 else out_chs, out_chs, stride=stride if i == 0 else 1,
                                   feat_size=feat_size, drop_path=drop_path[i], **block_kwargs.get(letter, {})))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def build_stages(cfg: AscanCfg, img_size: tuple[int, int], drop_path_rate: float) -> tuple[nn.Sequential, list]:
    """The stages of ``cfg`` and their timm ``feature_info``; drop-path rates ramp linearly over all blocks."""
    stages = cfg.stages
    depths = [len(s) for s in stages]
    total = sum(depths)
    rates = [drop_path_rate * i / max(1, total - 1) for i in range(total)]  # linear ramp, as in timm
    feat = (img_size[0] // cfg.stem_stride, img_size[1] // cfg.stem_stride)
    reduction, in_chs = cfg.stem_stride, cfg.stem_width
    feature_info, modules = [], []
    for i, (letters, width, stride) in enumerate(zip(stages, cfg.widths, cfg.stage_strides, strict=True)):
        feat = (-(-feat[0] // stride), -(-feat[1] // stride))
        reduction *= stride
        start = sum(depths[:i])
        modules.append(AscanStage(letters, in_chs, width, stride, feat, rates[start:start + len(letters)],
                                  cfg.kwargs_for_stage(i)))
        feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}"))
        in_chs = width
    return nn.Sequential(*modules), feature_info


BOOL_FIELDS = ("final_norm", "head_norm", "strict_input_size", "compile_static_size")


def check_cfg(cfg: AscanCfg) -> None:
    """Raise ``ValueError`` (widths: ``LayoutError``) naming the field of ``cfg`` that is out of range."""
    validate_widths(cfg.stages, cfg.widths)
    if len(cfg.stage_strides) != len(cfg.stages):
        raise ValueError(f"{len(cfg.stages)} stages but {len(cfg.stage_strides)} stage strides: {cfg.stage_strides}")
    if cfg.stem_stride < 1 or any(s < 1 for s in cfg.stage_strides):
        raise ValueError(f"stem_stride and stage_strides must be >= 1, got {cfg.stem_stride} and {cfg.stage_strides}")
    if cfg.stem_width < 1:
        raise ValueError(f"stem_width must be >= 1, got {cfg.stem_width}")
    if cfg.head_width < 0:
        raise ValueError(f"head_width must be >= 0 (0: no head projection), got {cfg.head_width}")
    for name in BOOL_FIELDS:
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(cfg, name)!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_model_args(num_classes: int, in_chans: int, img_size: int | tuple, drop_rate: float,
                     drop_path_rate: float) -> tuple[int, int]:
    """Raise ``ValueError`` naming the constructor argument that is out of range; the image size as ``(h, w)``."""
    if not _is_int(num_classes) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0 (0: no classifier), got {num_classes!r}")
    if not _is_int(in_chans) or in_chans < 1:
        raise ValueError(f"in_chans must be an integer >= 1, got {in_chans!r}")
    size = (img_size, img_size) if _is_int(img_size) else tuple(img_size) if isinstance(img_size, tuple | list) else ()
    if len(size) != 2 or not all(_is_int(side) and side >= 1 for side in size):
        raise ValueError(f"img_size must be a positive integer or an (h, w) pair of them, got {img_size!r}")
    for name, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    return size


def check_out_indices(out_indices: object, num_stages: int) -> None:
    """``features_only``'s ``out_indices``: stage numbers in ``-num_stages .. num_stages - 1`` (or a count)."""
    if _is_int(out_indices):  # timm: the last N stages
        if not 1 <= out_indices <= num_stages:
            raise ValueError(f"out_indices={out_indices}: the model has {num_stages} stages")
        return
    items = tuple(out_indices) if isinstance(out_indices, tuple | list) else None
    if not items or not all(_is_int(i) and -num_stages <= i < num_stages for i in items):
        raise ValueError(f"out_indices must be stage numbers in {-num_stages}..{num_stages - 1} (the model has "
                         f"{num_stages} stages), got {out_indices!r}")


def check_output_stride(output_stride: object, cfg: AscanCfg) -> None:
    """timm's ``output_stride`` (smp's DeepLabV3/V3+/PAN pass 8 or 16): only values the model already meets.

    ``None`` or anything ``>= cfg.reduction`` changes nothing (the maps never get coarser than the
    reduction). A smaller value would need the last stages run without their stride, which these
    models cannot do: their attention blocks carry relative-position tables learned for one stride (a
    dilated map would read offsets the table was not trained for, and global attention over a 4x/16x
    larger map), and the strided conv / NeoCell downsampling blocks have no dilated form. Refused with a
    ``ValueError`` that says so, instead of silently returning stride-``reduction`` maps.
    """
    if output_stride is None:
        return
    if not _is_int(output_stride) or output_stride < 1:
        raise ValueError(f"output_stride must be a positive integer, got {output_stride!r}")
    if output_stride < cfg.reduction:
        raise ValueError(
            f"output_stride={output_stride} is not supported: this model downsamples {cfg.reduction}x and cannot "
            f"trade the stride of its last stages for dilation (attention blocks hold relative-position tables "
            f"learned per feature-map stride, and strided conv / NeoCell downsampling has no dilated form). Use "
            f"output_stride={cfg.reduction} (or leave it unset) and a decoder that upsamples, e.g. smp's UPerNet, "
            f"FPN or Unet with a tu- encoder")


def create_head(in_chs: int, num_classes: int, global_pool: str, drop_rate: float, norm: bool) -> nn.Module:
    """timm's classifier head: pool -> (LayerNorm, with ``norm``) -> dropout -> linear."""
    if norm:
        return NormMlpClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                     norm_layer=partial(LayerNorm2d, eps=HEAD_NORM_EPS))
    return ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate)


class AscanNet(nn.Module):
    """Hybrid conv/attention classifier built from a layout string (timm model conventions).

    ``stem -> stages -> norm_pre -> head_conv`` is ``forward_features``; ``head`` (timm's
    ``ClassifierHead`` or ``NormMlpClassifierHead``) pools and classifies.
    """

    def __init__(self, cfg: AscanCfg, num_classes: int = 1000, in_chans: int = 3, img_size: int | tuple = 224,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 output_stride: int | None = None):
        super().__init__()
        check_cfg(cfg)
        img_size = check_model_args(num_classes, in_chans, img_size, drop_rate, drop_path_rate)
        check_output_stride(output_stride, cfg)
        self.cfg = cfg
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.reduction = cfg.reduction
        self.strict_input_size = cfg.strict_input_size

        # The stem checks input sizes: it is the first module of every path (timm's features_only too).
        self.stem = create_stem(cfg.stem, in_chans, cfg.stem_width, cfg.stem_stride,
                                input_multiple=cfg.reduction if cfg.strict_input_size else 0,
                                static_size=cfg.compile_static_size)
        self.stages, self.feature_info = build_stages(cfg, img_size, drop_path_rate)
        last = cfg.widths[-1]
        self.norm_pre = nn.BatchNorm2d(last) if cfg.final_norm else nn.Identity()
        if cfg.head_width:
            self.head_conv = ConvBN(last, cfg.head_width, 1, act_layer=nn.GELU)
        else:  # no 1x1 projection before pooling (CoAtNet, NeoNeXt)
            self.head_conv = nn.Identity()
        self.num_features = self.head_hidden_size = cfg.head_width or last
        self.head = create_head(self.num_features, num_classes, global_pool, drop_rate, cfg.head_norm)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ---- timm API -------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative position tables (like timm's CoAtNet/MaxViT) are excluded from weight decay."""
        return {name for name, _ in self.named_parameters() if name.endswith("rel_pos.table")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        fine = [(r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm_pre", (99999,)), (r"^head_conv", (99999,))]
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else fine)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Resize every position table, in place, for fine-tuning at ``img_size`` (the paper's 224 -> 512).

        Inference at other sizes works without this (tables are interpolated on the fly); this makes the
        new size the stored one, so training updates the table at its native size.
        """
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        for info, stage in zip(self.feature_info, self.stages, strict=True):
            feat = (-(-img_size[0] // info["reduction"]), -(-img_size[1] // info["reduction"]))
            for mod in stage.modules():
                if isinstance(mod, RelPosBiasTable):
                    mod.set_feat_size(feat)
        if hasattr(self, "pretrained_cfg"):
            in_chans = self.pretrained_cfg["input_size"][0]
            self.pretrained_cfg = {**self.pretrained_cfg, "input_size": (in_chans, *img_size)}

    @torch.jit.ignore
    def resize_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state_dict`` fitted to this model by :func:`checkpoint_filter_fn` (relative position tables
        resized to this model's feature-map sizes, earlier key names renamed; other entries as they are)."""
        return checkpoint_filter_fn(state_dict, self)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head_conv(self.norm_pre(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs (S1..S4) for dense tasks; ``norm`` applies ``norm_pre`` to the last stage's output."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        x = self.stem(x)
        last = len(self.stages) - 1
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm_pre(x) if norm and feat_idx == last else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last:
            x = self.head_conv(self.norm_pre(x))
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep the stages up to the last of ``indices``; a model cut before its end (or with ``prune_head``)
        ends in average-pooled features of its last stage (no norm, projection or classifier)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_norm or prune_end:
            self.norm_pre = nn.Identity()
        if prune_head or prune_end:
            self.head_conv = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head = create_head(self.num_features, 0, "avg", self.drop_rate, norm=False)
            self.num_classes = 0
        return take_indices


# --------------------------------------------------------------------------------------------------
# Checkpoints: position tables follow the resolution
# --------------------------------------------------------------------------------------------------

# Keys written by earlier versions of this package -> today's: the classifier became a timm head module
# (``fc`` -> ``head.fc``; CoAtNet's ``head_norm`` -> ``head.norm``) and NeoNeXt's stage transition became
# the first ``N`` block of its stage.
LEGACY_KEYS = (
    (re.compile(r"^fc\."), "head.fc."),
    (re.compile(r"^head_norm\."), "head.norm."),
    (re.compile(r"^stages\.(\d+)\.downsample\."), r"stages.\1.blocks.0.transition."),
)


def rename_legacy_key(key: str) -> str:
    """Today's name of a state-dict key an earlier version of this package wrote (:data:`LEGACY_KEYS`)."""
    for pattern, replacement in LEGACY_KEYS:
        key = pattern.sub(replacement, key)
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize every relative position table in ``state_dict`` to the model's (fine-tuning) resolution
    and rename the keys of earlier versions (:data:`LEGACY_KEYS`)."""
    targets = {f"{name}.table": mod.feat_size for name, mod in model.named_modules()
               if isinstance(mod, RelPosBiasTable)}
    out = {}
    for key, value in state_dict.items():
        key = rename_legacy_key(key)
        if key in targets:
            value = resize_rel_pos_table(value, targets[key])
        out[key] = value
    return out


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a local safetensors file (never a pickle), resizing position tables to the model's size."""
    from safetensors.torch import load_file

    state = checkpoint_filter_fn(load_file(str(path)), model)
    model.load_state_dict(state, strict=strict)
    return model


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the model's weights as safetensors, atomically (write, then rename)."""
    from ascan.atomic import save_safetensors

    save_safetensors(model.state_dict(), path)


# --------------------------------------------------------------------------------------------------
# Registered variants
# --------------------------------------------------------------------------------------------------


CFG_OVERRIDES = tuple(f.name for f in fields(AscanCfg))
TUPLE_FIELDS = ("widths", "stage_strides", "stage_block_kwargs")


def _create_ascan(variant: str, cfg: AscanCfg, pretrained: bool = False, model_cls: type = AscanNet,
                  block_options: dict[str, dict] | None = None, **kwargs) -> AscanNet:
    """Build through timm so ``features_only``, pretrained cfgs and local weight files work.

    Any field of :class:`AscanCfg` may be overridden as a keyword argument, e.g.
    ``timm.create_model("ascan_nano", layout="CC-CCCC-CCCC-TTTT")``. ``block_options`` (a family's own
    model-level options, e.g. CoAtNet's ``placement``) update ``block_kwargs`` per letter.
    """
    overrides = {k: kwargs.pop(k) for k in CFG_OVERRIDES if k in kwargs}
    for key in TUPLE_FIELDS:
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    cfg = replace(cfg, **overrides)
    if block_options:
        merged = dict(cfg.block_kwargs)
        for letter, options in block_options.items():
            merged[letter] = {**merged.get(letter, {}), **options}
        cfg = replace(cfg, block_kwargs=merged)
    if kwargs.get("features_only") and "out_indices" in kwargs:
        check_out_indices(kwargs["out_indices"], len(cfg.stages))
    model = build_model_with_cfg(
        model_cls, variant, pretrained, cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=tuple(range(len(cfg.stages))), flatten_sequential=True),
        **kwargs,
    )
    in_chans = kwargs.get("in_chans", 3)
    model.pretrained_cfg = model.default_cfg = cfg_for_channels(model.pretrained_cfg, in_chans)
    return model


def cfg_for_channels(pretrained_cfg: dict, in_chans: int) -> dict:
    """``pretrained_cfg`` describing ``in_chans`` input channels, so that timm's data config agrees with the model.

    timm's ``train.py`` / ``validate.py`` build every model with ``in_chans=3`` unless told otherwise, and
    read the channel count (``'RGB'`` or ``'L'`` loading) and the mean/std from the built model's
    ``pretrained_cfg`` (``resolve_data_config``). A cfg written for another channel count (ascan_nano's
    1-channel Fashion-MNIST default) gets its ``input_size`` channel set to ``in_chans`` and its one-channel
    mean/std repeated (several channels to one: their average). The weights are loaded before this.
    """
    size = pretrained_cfg.get("input_size")
    if not size or size[0] == in_chans:
        return pretrained_cfg
    out = {**pretrained_cfg, "input_size": (in_chans, *size[1:])}
    if out.get("test_input_size"):
        out["test_input_size"] = (in_chans, *out["test_input_size"][1:])
    for key in ("mean", "std"):
        values = tuple(out.get(key) or ())
        if values and len(values) != in_chans:
            value = values[0] if len(values) == 1 else sum(values) / len(values)
            out[key] = (value,) * in_chans
    return out


def _cfg(input_size: int = 224, in_chans: int = 3, **kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (in_chans, input_size, input_size),
        "pool_size": (input_size // 32, input_size // 32), "crop_pct": 0.95, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv", "classifier": "head.fc", "license": "apache-2.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "ascan_tiny.untrained": _cfg(),
    "ascan_base.untrained": _cfg(),
    "ascan_large.untrained": _cfg(),
    "ascan_nano.untrained": _cfg(32, in_chans=1, pool_size=(2, 2), mean=(0.5,), std=(0.5,), num_classes=10,
                                 crop_pct=1.0),
    **{f"ascan_t_{k}.untrained": _cfg() for k in TABLE3_LAYOUTS},
})


@register_model
def ascan_tiny(pretrained: bool = False, **kwargs) -> AscanNet:
    """AsCAN-T: CC-CCCT-CCTT-CTTT, widths 96-192-384-768, stem 64, head 512 (Table 5)."""
    return _create_ascan("ascan_tiny", TABLE5["tiny"], pretrained, **kwargs)


@register_model
def ascan_base(pretrained: bool = False, **kwargs) -> AscanNet:
    """AsCAN-B: CC-C4T2-C7T7-CTTT, widths 96-192-384-768, stem 64, head 768 (Table 5)."""
    return _create_ascan("ascan_base", TABLE5["base"], pretrained, **kwargs)


@register_model
def ascan_large(pretrained: bool = False, **kwargs) -> AscanNet:
    """AsCAN-L: CC-C4T2-C7T7-CTTT, widths 128-256-512-1024, stem 128, head 1024 (Table 5)."""
    return _create_ascan("ascan_large", TABLE5["large"], pretrained, **kwargs)


@register_model
def ascan_nano(pretrained: bool = False, **kwargs) -> AscanNet:
    """Small-image AsCAN (32 px, 1 channel by default): C1 layout at widths 24-48-96-192, reduction 16."""
    kwargs.setdefault("in_chans", 1)
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("img_size", 32)
    return _create_ascan("ascan_nano", NANO, pretrained, **kwargs)


def _create_table3(key: str, pretrained: bool, **kwargs) -> AscanNet:
    """Patent Table 3 configuration ``key``: its layout at AsCAN-T widths."""
    cfg = replace(TABLE5["tiny"], layout=TABLE3_LAYOUTS[key])
    return _create_ascan(f"ascan_t_{key}", cfg, pretrained, **kwargs)


@register_model
def ascan_t_c1(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C1: CC-CCCT-CCTT-CTTT at AsCAN-T widths."""
    return _create_table3("c1", pretrained, **kwargs)


@register_model
def ascan_t_c2(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C2: CC-CCCT-CCTT-CCTT at AsCAN-T widths."""
    return _create_table3("c2", pretrained, **kwargs)


@register_model
def ascan_t_c3(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C3: CC-CCCT-CCTT-TTTT at AsCAN-T widths."""
    return _create_table3("c3", pretrained, **kwargs)


@register_model
def ascan_t_c4(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C4: CC-CCCT-CCCC-TTTT at AsCAN-T widths."""
    return _create_table3("c4", pretrained, **kwargs)


@register_model
def ascan_t_c5(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C5: CC-CCCT-CCCT-CCCT at AsCAN-T widths."""
    return _create_table3("c5", pretrained, **kwargs)


@register_model
def ascan_t_c6(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C6: CC-CCCC-CCCC-TTTT at AsCAN-T widths."""
    return _create_table3("c6", pretrained, **kwargs)


@register_model
def ascan_t_c7(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C7: CC-CCCC-CCTT-TTTT at AsCAN-T widths."""
    return _create_table3("c7", pretrained, **kwargs)


@register_model
def ascan_t_c8(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C8: CC-CCCC-TTTT-TTTT at AsCAN-T widths."""
    return _create_table3("c8", pretrained, **kwargs)


@register_model
def ascan_t_c9(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C9: CC-TTTT-TTTT-TTTT at AsCAN-T widths."""
    return _create_table3("c9", pretrained, **kwargs)


@register_model
def ascan_t_c10(pretrained: bool = False, **kwargs) -> AscanNet:
    """Patent Table 3 configuration C10: CC-CCTT-CCTT-CCTT at AsCAN-T widths."""
    return _create_table3("c10", pretrained, **kwargs)


__all__ = ["AscanCfg", "AscanNet", "TABLE3_LAYOUTS", "TABLE5", "cfg_for_channels", "check_input_size",
           "check_output_stride", "checkpoint_filter_fn", "format_layout", "load_weights", "save_weights"]
