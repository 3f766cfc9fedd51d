"""A measured latency model: per-block timings summed into a layout's predicted latency.

A layout's forward time is close to the sum of its blocks' times, because blocks run one after another
on the same tensors. Each block's time depends on its letter, its stage (width, feature size) and whether
it is the stage's first block (stride, channel change), so the table holds one entry per (stage, first or
other, letter), plus the stem and the head. Entries are timed in interleaved rounds
(:func:`ascan.bench.timing.run_interleaved`) so machine drift hits them alike. The sum misses what
whole models add (allocator, cache effects), so one scale factor, calibrated against a few whole-model
timings, multiplies it. Tables are cached as JSON per setting and machine.
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ascan.atomic import atomic_write_text
from ascan.bench.timing import Case, run_interleaved
from ascan.layers.registry import BLOCKS, get_block
from ascan.layout import parse_layout

# The main job's model (configs/fashion_mnist.yaml): nano at reduced widths, 32 px Fashion-MNIST.
MAIN_WIDTHS = (16, 32, 64, 128)
MAIN_BLOCK_KWARGS = {"T": {"head_dim": 16}, "C": {"expand_ratio": 2.0}}
DTYPES = ("fp32", "bf16")
MAX_BATCH = 4096
MAX_IMG = 1024


@dataclass(frozen=True)
class Setting:
    """What a latency table is valid for: the model's shape knobs and how it is run."""

    widths: tuple[int, ...] = MAIN_WIDTHS
    stem_width: int = 16
    head_width: int = 128
    stem_stride: int = 2
    stage_strides: tuple[int, ...] = (1, 2, 2, 2)
    block_kwargs: dict = field(default_factory=lambda: json.loads(json.dumps(MAIN_BLOCK_KWARGS)))
    batch: int = 256
    img_size: int = 32
    in_chans: int = 1
    num_classes: int = 10
    dtype: str = "bf16"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if len(self.stage_strides) != len(self.widths):
            raise ValueError(f"stage_strides: {len(self.stage_strides)} for {len(self.widths)} widths")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be in 1..{MAX_BATCH}, got {self.batch}")
        if not 8 <= self.img_size <= MAX_IMG:
            raise ValueError(f"img_size must be in 8..{MAX_IMG}, got {self.img_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    def model_kwargs(self, layout: str) -> dict:
        """Keyword arguments for ``timm.create_model("ascan_nano", **kwargs)`` with this setting."""
        return dict(layout=layout, widths=list(self.widths), stem_width=self.stem_width,
                    head_width=self.head_width, stem_stride=self.stem_stride,
                    stage_strides=list(self.stage_strides), block_kwargs=self.block_kwargs,
                    num_classes=self.num_classes,
                    in_chans=self.in_chans, img_size=self.img_size)

    def key(self) -> str:
        """Cache key: this setting plus the machine it was measured on."""
        return json.dumps({"machine": platform.node(), "cpu": platform.processor(),
                           "torch": torch.__version__, **asdict(self)}, sort_keys=True)


def entry_key(stage: int, first: bool, letter: str) -> str:
    return f"s{stage}:{'first' if first else 'other'}:{letter}"


STEM, HEAD = "stem", "head"


@dataclass
class LatencyTable:
    """Milliseconds per batch for each table entry, and the whole-model calibration scale."""

    setting_key: str
    ms: dict[str, float]
    scale: float = 1.0

    def raw_sum(self, layout: str) -> float:
        total = self.ms[STEM] + self.ms[HEAD]
        for i, stage in enumerate(parse_layout(layout)):
            for j, letter in enumerate(stage):
                key = entry_key(i, j == 0, letter)
                if key not in self.ms:
                    raise ValueError(f"layout: no table entry {key!r}; measure that letter at that stage")
                total += self.ms[key]
        return total

    def predict_ms(self, layout: str) -> float:
        return self.scale * self.raw_sum(layout)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        return cls(**json.loads(Path(path).read_text()))


def _autocast(setting: Setting):
    if setting.dtype == "bf16":
        return torch.autocast(setting.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def activation_dtype(setting: Setting) -> torch.dtype:
    """The dtype a block receives inside the model: the image enters in fp32, but under bf16 autocast every
    block after the stem gets the previous conv's bf16 output. Timing a block alone on fp32 input adds a cast
    per call that the model never pays (measured: blocks alone 10-70 % slower than inside the model)."""
    return torch.bfloat16 if setting.dtype == "bf16" else torch.float32


def _case(key: str, module: nn.Module, x: torch.Tensor, setting: Setting) -> Case:
    module.eval()

    @torch.inference_mode()
    def step() -> None:
        with _autocast(setting):
            module(x)

    return Case(key, step, setting.batch)


def table_cases(setting: Setting, letters: str | None = None) -> list[Case]:
    """One timing case per table entry: each block alone on an input of its position's shape."""
    from ascan.layers.stem import create_stem

    letters = letters or "".join(sorted(BLOCKS))
    b, s = setting.batch, setting.img_size
    cases = [_case(STEM, create_stem("conv", setting.in_chans, setting.stem_width, setting.stem_stride),
                   torch.randn(b, setting.in_chans, s, s), setting)]
    feat, in_chs = -(-s // setting.stem_stride), setting.stem_width
    act = activation_dtype(setting)
    for i, (width, stride) in enumerate(zip(setting.widths, setting.stage_strides, strict=True)):
        out_feat = -(-feat // stride)
        for first in (True, False):
            chs, st, side = (in_chs, stride, feat) if first else (width, 1, out_feat)
            for letter in letters:
                block = get_block(letter).cls(chs, width, stride=st, feat_size=(out_feat, out_feat), drop_path=0.0,
                                              **setting.block_kwargs.get(letter, {}))
                x = torch.randn(b, chs, side, side, dtype=act)
                cases.append(_case(entry_key(i, first, letter), block, x, setting))
        feat, in_chs = out_feat, width
    from ascan.layers.conv_bn import ConvBN

    head = nn.Sequential(ConvBN(in_chs, setting.head_width, 1, act_layer=nn.GELU), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(setting.head_width, setting.num_classes))
    cases.append(_case(HEAD, head, torch.randn(b, in_chs, feat, feat, dtype=act), setting))
    return cases


def model_case(layout: str, setting: Setting) -> Case:
    import ascan.models  # noqa: F401  (registers ascan_nano)
    from ascan.factory import create_model

    model = create_model("ascan_nano", **setting.model_kwargs(layout))
    x = torch.randn(setting.batch, setting.in_chans, setting.img_size, setting.img_size)
    return _case(layout, model, x, setting)


@dataclass(frozen=True)
class TimingPlan:
    warmup: int = 2
    iters: int = 3
    repeats: int = 5


def measure_models(layouts: list[str], setting: Setting, plan: TimingPlan = TimingPlan()) -> dict[str, float]:
    """End-to-end milliseconds per batch of each layout, timed in interleaved rounds."""
    result = run_interleaved([model_case(lay, setting) for lay in layouts], warmup=plan.warmup, iters=plan.iters,
                             repeats=plan.repeats)
    return {k: m.ms_per_batch for k, m in result.items()}


def build_table(setting: Setting, calibration_layouts: list[str], plan: TimingPlan = TimingPlan(),
                letters: str | None = None) -> LatencyTable:
    """Time every table entry, then calibrate the sum's scale on ``calibration_layouts`` (median ratio)."""
    result = run_interleaved(table_cases(setting, letters), warmup=plan.warmup, iters=plan.iters,
                             repeats=plan.repeats)
    table = LatencyTable(setting.key(), {k: m.ms_per_batch for k, m in result.items()})
    if calibration_layouts:
        table.scale = calibration_scale(table, measure_models(calibration_layouts, setting, plan),
                                        calibration_layouts)
    return table


def calibration_scale(table: LatencyTable, measured: dict[str, float], layouts: list[str]) -> float:
    """The median measured / summed ratio over ``layouts``: what whole models add to (or save on) their blocks,
    and the machine's speed at the time ``measured`` was taken."""
    return statistics.median(measured[lay] / table.raw_sum(lay) for lay in layouts)


def load_or_build(path: str | Path, setting: Setting, calibration_layouts: list[str],
                  plan: TimingPlan = TimingPlan(), letters: str | None = None) -> LatencyTable:
    """The cached table at ``path`` if it was measured for this setting and machine, else a new one (saved)."""
    path = Path(path)
    if path.is_file():
        table = LatencyTable.load(path)
        if table.setting_key == setting.key():
            return table
    table = build_table(setting, calibration_layouts, plan, letters)
    table.save(path)
    return table


def prediction_errors(table: LatencyTable, measured: dict[str, float]) -> dict[str, float]:
    """Relative error |predicted - measured| / measured of each layout."""
    return {lay: abs(table.predict_ms(lay) - ms) / ms for lay, ms in measured.items()}


def random_layouts(n: int, seed: int, priors=None) -> list[str]:
    from ascan.search.space import Priors, sample_layouts

    return sample_layouts(priors or Priors(rules=False), n, seed=seed + random.Random(seed).randint(0, 10**6))
