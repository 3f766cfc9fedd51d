"""AsCAN: asymmetric convolution-attention networks (patent Tables 3 and 5).

A stem, four stages written in the layout grammar (``"CC-CCCT-CCTT-CTTT"``), and a classifier. Reads
top to bottom: config, stem/stage modules, the model, checkpoint helpers, registered variants.

The stem is two 3x3 convolutions (the first with stride 2, BN + GELU between them); every stage opens
with a stride-2 block that changes the width; the classifier projects with a 1x1 conv + BN + GELU,
average-pools and applies a linear layer (Table 5, S5). The 1x1 head conv lives in
``forward_features`` (as in timm's EfficientNet), so ``num_features`` is the head width.
"""


from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SelectAdaptivePool2d, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from ascan.layers.conv_bn import ConvBN
from ascan.layers.registry import get_block
from ascan.layers.rel_pos import RelPosBias, resize_rel_pos_table
from ascan.layout import Layout, format_layout, parse_layout, validate_widths

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AscanCfg:
    """Architecture of one AsCAN network.

    ``head_width=0`` drops the 1x1 head projection (pool the last stage directly).
    ``block_kwargs`` maps a block letter to extra constructor arguments (e.g. ``{"T": {"head_dim": 16}}``);
    ``stage_block_kwargs`` does the same per stage (e.g. ``({"C": {"expand_ratio": 1.0}},)`` for an
    EfficientNetV2-like first stage: an experiment, not the paper's models).
    ``stem_stride`` and ``stage_strides`` set the downsampling; the product is the model's reduction.
    """

    layout: str = "CC-CCCT-CCTT-CTTT"
    widths: tuple[int, ...] = (96, 192, 384, 768)
    stem_width: int = 64
    head_width: int = 512
    stem_stride: int = 2
    stage_strides: tuple[int, ...] = (2, 2, 2, 2)
    block_kwargs: dict[str, dict] = field(default_factory=dict)
    stage_block_kwargs: tuple[dict[str, dict], ...] = ()

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

# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


@register_notrace_function  # shape check: opaque to FX
def check_input_size(x: torch.Tensor, reduction: int) -> None:
    """Sides must be multiples of the model's reduction: a clear error instead of a shape mismatch later."""
    h, w = x.shape[-2], x.shape[-1]
    if h % reduction != 0 or w % reduction != 0:
        raise ValueError(f"input size {h}x{w}: both sides must be multiples of {reduction} "
                         f"(the model downsamples {reduction}x)")


class Stem(nn.Module):
    """Conv 3x3 (stride) -> BN -> GELU -> Conv 3x3 (patent [0046], Table 5 S0)."""

    def __init__(self, in_chans: int, width: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(in_chans, width, 3, stride, act_layer=nn.GELU)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


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


class AscanNet(nn.Module):
    """Hybrid conv/attention classifier built from a layout string (timm model conventions)."""

    def __init__(self, cfg: AscanCfg, num_classes: int = 1000, in_chans: int = 3, img_size: int | tuple = 224,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        stages = cfg.stages
        validate_widths(stages, cfg.widths)
        if len(cfg.stage_strides) != len(stages):
            raise ValueError(f"{len(stages)} stages but {len(cfg.stage_strides)} stage strides: {cfg.stage_strides}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.cfg = cfg
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.reduction = cfg.reduction

        self.stem = Stem(in_chans, cfg.stem_width, cfg.stem_stride)
        depths = [len(s) for s in stages]
        total = sum(depths)
        rates = [drop_path_rate * i / max(1, total - 1) for i in range(total)]  # linear ramp, as in timm
        feat = (img_size[0] // cfg.stem_stride, img_size[1] // cfg.stem_stride)
        reduction, in_chs = cfg.stem_stride, cfg.stem_width
        self.feature_info = []
        stage_modules = []
        for i, (letters, width, stride) in enumerate(zip(stages, cfg.widths, cfg.stage_strides, strict=True)):
            feat = (-(-feat[0] // stride), -(-feat[1] // stride))
            reduction *= stride
            start = sum(depths[:i])
            stage_modules.append(AscanStage(letters, in_chs, width, stride, feat, rates[start:start + len(letters)],
                                            cfg.kwargs_for_stage(i)))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}"))
            in_chs = width
        self.stages = nn.Sequential(*stage_modules)

        if cfg.head_width:
            self.head_conv = ConvBN(in_chs, cfg.head_width, 1, act_layer=nn.GELU)
        else:  # no 1x1 projection before pooling (e.g. CoAtNet)
            self.head_conv = nn.Identity()
        self.num_features = self.head_hidden_size = cfg.head_width or in_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # ---- timm API -------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative position tables (like timm's CoAtNet/MaxViT) are excluded from weight decay."""
        return {name for name, _ in self.named_parameters() if name.endswith("rel_pos.table")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                                                            (r"^head_conv", (99999,))])

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
                if isinstance(mod, RelPosBias):
                    mod.set_feat_size(feat)
        if hasattr(self, "pretrained_cfg"):
            in_chans = self.pretrained_cfg["input_size"][0]
            self.pretrained_cfg = {**self.pretrained_cfg, "input_size": (in_chans, *img_size)}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.reduction)
        x = self.stages(self.stem(x))
        return self.head_conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs (S1..S4) for dense tasks; ``norm`` is accepted for API parity (no final norm here)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        check_input_size(x, self.reduction)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        x = self.stem(x)
        last = len(self.stages) - 1
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if feat_idx == last:
            x = self.head_conv(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head:
            self.head_conv = nn.Identity()
            self.num_features = self.cfg.widths[max_index]
            self.reset_classifier(0, "")
        return take_indices


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------------
# Checkpoints: position tables follow the resolution
# --------------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize every relative position table in ``state_dict`` to the model's (fine-tuning) resolution."""
    targets = {f"{name}.table": mod.feat_size for name, mod in model.named_modules() if isinstance(mod, RelPosBias)}
    out = {}
    for key, value in state_dict.items():
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


def _create_ascan(variant: str, cfg: AscanCfg, pretrained: bool = False, model_cls: type = AscanNet,
                  **kwargs) -> AscanNet:
    """Build through timm so ``features_only``, pretrained cfgs and local weight files work.

    Any field of :class:`AscanCfg` may be overridden as a keyword argument, e.g.
    ``timm.create_model("ascan_nano", layout="CC-CCCC-CCCC-TTTT")``.
    """
    overrides = {k: kwargs.pop(k) for k in CFG_OVERRIDES if k in kwargs}
    for key in ("widths", "stage_strides", "stage_block_kwargs"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    cfg = replace(cfg, **overrides)
    return build_model_with_cfg(
        model_cls, variant, pretrained, cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=tuple(range(len(cfg.stages))), flatten_sequential=True),
        **kwargs,
    )


def _cfg(input_size: int = 224, in_chans: int = 3, **kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (in_chans, input_size, input_size),
        "pool_size": (input_size // 32, input_size // 32), "crop_pct": 0.95, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv", "classifier": "fc", "license": "apache-2.0", **kwargs,
    }


TABLE3_PARAMS_M = (55, 73, 41, 50, 95, 51, 42, 34, 30, 72)
PAPER_FIGURES = {  # params (M), MACs @224 (G) from patent Tables 3 and 4
    "ascan_tiny": (55, 7.7), "ascan_base": (98, 16.7), "ascan_large": (173, 30.7),
    **{f"ascan_t_{k}": (p, None) for k, p in zip(TABLE3_LAYOUTS, TABLE3_PARAMS_M, strict=True)},
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


def _register_table3(key: str, layout: str) -> None:
    name = f"ascan_t_{key}"

    def fn(pretrained: bool = False, **kwargs) -> AscanNet:
        return _create_ascan(name, replace(TABLE5["tiny"], layout=layout), pretrained, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"Patent Table 3 configuration {key.upper()}: {layout} at AsCAN-T widths."
    fn.__module__ = __name__
    globals()[name] = register_model(fn)


for _key, _layout in TABLE3_LAYOUTS.items():
    _register_table3(_key, _layout)

__all__ = ["AscanCfg", "AscanNet", "TABLE3_LAYOUTS", "TABLE5", "checkpoint_filter_fn", "format_layout",
           "load_weights", "save_weights"]
