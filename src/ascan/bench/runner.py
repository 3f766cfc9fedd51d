"""Build the models and the timed steps of one benchmark run, time them interleaved, collect rows.

A *variant* is one built model (``ascan_tiny`` or its BatchNorm-folded copy ``ascan_tiny+fused``) in one
runtime and precision (PyTorch, or a converted graph: :mod:`ascan.bench.runtimes`); a *case* is a variant at
one batch size in one mode (inference, or a training step). All cases live in memory together so that
:func:`ascan.bench.timing.run_interleaved` can alternate them. Every inference variant is checked against the
eager fp32 model before anything is timed (:func:`ascan.bench.runtimes.check_parity`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from ascan.bench import presets, runtimes
from ascan.bench.memory import step_peak_bytes
from ascan.bench.presets import CASTS, FUSE_CHOICES, PRECISIONS, RUNTIMES
from ascan.bench.timing import Case, Measurement, plan_size, run_interleaved, throughput_ratio
from ascan.config import AT_LEAST_ONE, NON_NEGATIVE, Range, check_ranges, setting
from ascan.errors import UserError
from ascan.factory import create_model, is_ours
from ascan.flops import count_flops
from ascan.fusion import fuse_with_summary
from ascan.paper import paper_figures

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Per-model options of --setup: memory format, cast, runtime and precision.
SETUP_OPTIONS = ("cl", "nchw") + CASTS + RUNTIMES + PRECISIONS
PEAK_TFLOPS_RANGE = Range(0.0, math.inf, low_open=True, high_open=True)
BATCH_RANGE = Range(1, 4096)  # one timed batch: above this a 224-px batch alone exceeds any machine's memory
MODES = ("infer", "train")
# A model entry may carry its own setup: ``convnext_small@openvino,int8`` (so one run can time the same model in
# several runtimes or precisions side by side; the entry is the row's label).
ENTRY_SEP = "@"
FUSED_SUFFIX = "+fused"
# Training-step cost is counted on a batch of this size (BatchNorm in train mode needs > 1 sample).
_TRAIN_FLOP_BATCH = 2
_MIB = 2**20
DEFAULT_IMG_SIZE = 224
DEFAULT_IN_CHANS = 3


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines one ``ascan bench`` run (the CLI fills it in)."""

    models: tuple[str, ...]
    batch_sizes: tuple[int, ...] = (1, 16, 64)
    img_size: int | None = setting(None, AT_LEAST_ONE)  # None: each model's Table-4 (else timm default) resolution
    precision: str = setting("fp32", choices=PRECISIONS)  # --precision (alias --dtype); per model in --setup
    runtime: str = setting("torch", choices=RUNTIMES)  # per model in --setup
    channels_last: bool = False
    compile: bool = False
    fullgraph: bool = False
    compile_mode: str | None = None
    freeze: bool = False  # with compile: inductor's freezing (weights as constants, oneDNN-prepacked) for inference
    fuse: str = setting("off", choices=FUSE_CHOICES)
    train: bool = False
    device: str = setting("cpu", choices=("cpu", "cuda"))
    warmup: int = setting(2, NON_NEGATIVE)
    iters: int = setting(5, AT_LEAST_ONE)
    repeats: int = setting(5, AT_LEAST_ONE)
    num_classes: int = setting(1000, NON_NEGATIVE)  # 0: no classifier (timm's convention)
    peak_tflops: float | None = setting(None, PEAK_TFLOPS_RANGE)
    reference: str | None = None
    seed: int = setting(0, NON_NEGATIVE)
    cast: str = setting("autocast", choices=CASTS)
    # (model, "opt,opt") pairs: that model's memory format / cast / runtime / precision, overriding the run's
    setups: tuple[tuple[str, str], ...] = ()
    # the low-precision inference fast path for ascan models: fused, weights in the dtype, channels-last
    fast: bool = False
    measure_peak: bool = False  # time a large matmul + conv in the dtype; fractions are of that peak

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.train else ("infer",)


@dataclass
class Variant:
    """One built model ready to time."""

    label: str
    model_name: str
    fused: bool
    ours: bool
    in_chans: int
    img_size: int
    params: int
    forward_flops: float  # per image, inference
    train_flops: float  # per image, forward + backward
    bn_folded: int
    channels_last: bool = False
    cast: str = "autocast"
    runtime: str = "torch"
    precision: str = "fp32"
    eager: dict[str, nn.Module] = field(default_factory=dict)  # mode -> module before compile
    runnable: dict[str, nn.Module] = field(default_factory=dict)  # mode -> module to time
    deployed: runtimes.Deployed | None = None  # a converted graph (another runtime, or PyTorch int8)
    parity: runtimes.Parity | None = None  # against eager fp32, checked before timing


@dataclass
class Row:
    """One line of the report: a variant at one batch size in one mode."""

    label: str
    model: str
    ours: bool
    fused: bool
    mode: str
    batch_size: int
    img_size: int
    img_per_s: float
    spread_pct: float
    ms_per_batch: float
    ratio: float | None
    ratio_low: float | None
    ratio_high: float | None
    reference: str
    params_m: float
    macs_g: float
    tflops: float
    peak_fraction: float | None
    peak_mem_mib: float
    bn_folded: int
    setup: str
    runtime: str
    precision: str
    parity_max_abs: float | None
    parity_cosine: float | None
    paper_name: str | None
    paper_a100_img_per_s: float | None
    img_per_s_by_round: list[float]


# --------------------------------------------------------------------------------------------
# validation


def check_model_names(names: tuple[str, ...]) -> None:
    import ascan  # noqa: F401  (registers our models with timm)

    for name in names:
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown model {name!r} (not in timm's registry){hint}")


def split_entry(entry: str) -> tuple[str, str]:
    """``(timm name, inline setup options)`` of a model entry (``name`` or ``name@opt,opt``)."""
    name, _, options = entry.partition(ENTRY_SEP)
    return name, options


def _check_options(what: str, options: str) -> None:
    bad = [o for o in options.split(",") if o not in SETUP_OPTIONS]
    if bad or not options:
        raise UserError(f"{what}: options are a comma list of {', '.join(SETUP_OPTIONS)}")


def check_config(cfg: BenchConfig) -> None:
    """Reject bad arguments before any model is built: one clear line each."""
    if not cfg.models:
        raise UserError("no models given: name some, or use --preset")
    if len(set(cfg.models)) != len(cfg.models):
        raise UserError("a model is listed twice")
    if not cfg.batch_sizes or any(b not in BATCH_RANGE for b in cfg.batch_sizes):
        raise UserError(f"--batch-sizes must each be in {BATCH_RANGE}, got {list(cfg.batch_sizes)}")
    check_ranges(cfg, as_flags=True)  # every field's declared range or choices, named as its option
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available on this machine")
    check_model_names(tuple(dict.fromkeys(split_entry(entry)[0] for entry in cfg.models)))
    for entry in cfg.models:
        if ENTRY_SEP in entry:
            _check_options(f"model {entry}", split_entry(entry)[1])
    if cfg.freeze and not cfg.compile:
        raise UserError("--freeze is an inductor setting: it needs --compile")
    if cfg.reference is not None and cfg.reference not in cfg.models:
        raise UserError(f"reference model {cfg.reference!r} is not among the benchmarked models")
    names = {split_entry(entry)[0] for entry in cfg.models}
    for name, options in cfg.setups:
        if name not in cfg.models and name not in names:
            raise UserError(f"--setup names {name!r}, which is not among the benchmarked models")
        _check_options(f"--setup {name}={options}", options)
    for entry in cfg.models:
        check_model_setup(cfg, entry, model_setup(cfg, entry, is_ours(split_entry(entry)[0])))


def check_model_setup(cfg: BenchConfig, name: str, setup: Setup) -> None:
    """One line for a runtime/precision the model cannot be timed in with the run's other settings."""
    runtimes.check_runtime(setup.runtime, setup.precision, name)
    converted = setup.runtime != runtimes.TORCH or setup.precision == "int8"
    what = f"{name} in {setup.runtime} {setup.precision}"
    if converted and cfg.train:
        raise UserError(f"{what}: --train times PyTorch training steps; a converted graph only runs inference")
    if converted and cfg.device != "cpu":
        raise UserError(f"{what}: converted graphs run on the CPU here, not --device {cfg.device}")
    if setup.runtime != runtimes.TORCH and cfg.compile:
        raise UserError(f"{what}: --compile is torch.compile; {setup.runtime} compiles its own graph")


class Setup(NamedTuple):
    """How one model runs: memory format and cast (PyTorch), runtime and precision."""

    channels_last: bool
    cast: str
    runtime: str = "torch"
    precision: str = "fp32"


def model_setup(cfg: BenchConfig, entry: str, ours: bool) -> Setup:
    """How one model entry runs: the run's flags, ``--fast`` for ascan models, that model's ``--setup`` (by timm
    name, then by entry), then the entry's own ``@`` options."""
    channels_last, cast, runtime, precision = cfg.channels_last, cfg.cast, cfg.runtime, cfg.precision
    if cfg.fast and ours:
        channels_last, cast = True, "weights"
    name, inline = split_entry(entry)
    chosen = [options for setup_name, options in cfg.setups if setup_name == name]
    chosen += [options for setup_name, options in cfg.setups if setup_name == entry != name]
    for options in chosen + ([inline] if inline else []):
        for option in options.split(","):
            if option in CASTS:
                cast = option
            elif option in RUNTIMES:
                runtime = option
            elif option in PRECISIONS:
                precision = option
            else:
                channels_last = option == "cl"
    return Setup(channels_last, cast, runtime, precision)


def setup_label(cfg: BenchConfig, variant: Variant) -> str:
    """What the report's ``setup`` column says: the runtime and precision of a converted graph; for PyTorch the
    memory format, below fp32 how the dtype is applied, and whether the module is ``torch.compile``d (and
    frozen)."""
    if variant.runtime != runtimes.TORCH:
        return f"{variant.runtime} {variant.precision}"
    if variant.precision == "int8":
        return "torch int8 (PT2E, compiled, frozen)"
    parts = ["channels-last" if variant.channels_last else "NCHW"]
    if variant.precision != "fp32":
        parts.append(f"{variant.precision} {'weights' if variant.cast == 'weights' else 'autocast'}")
    if cfg.compile:
        parts.append("compiled, frozen" if cfg.freeze else "compiled")
    return ", ".join(parts)


def resolve_img_size(cfg: BenchConfig, model_name: str) -> int:
    if cfg.img_size is not None:
        return cfg.img_size
    native = presets.native_resolution(model_name)
    if native is not None:
        return native
    pretrained_cfg = timm.get_pretrained_cfg(model_name)
    return int(pretrained_cfg.input_size[-1]) if pretrained_cfg is not None else DEFAULT_IMG_SIZE


def input_channels(model_name: str) -> int:
    """Image channels the model expects (ascan_nano takes 1-channel Fashion-MNIST)."""
    pretrained_cfg = timm.get_pretrained_cfg(model_name)
    return int(pretrained_cfg.input_size[0]) if pretrained_cfg is not None else DEFAULT_IN_CHANS


def total_stride(model: nn.Module) -> int:
    """Input-size granularity a model needs: timm's feature_info reduction of the last stage."""
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1]
        reduction = last.get("reduction") if isinstance(last, dict) else None
        if reduction:
            return int(reduction)
    return 32


# --------------------------------------------------------------------------------------------
# building


def create(model_name: str, img_size: int, num_classes: int) -> nn.Module:
    """The model without weights, sized for ``img_size`` by the one factory's rule (:mod:`ascan.factory`)."""
    return create_model(model_name, img_size=img_size, what="--img-size", num_classes=num_classes)


def _autocast(cfg: BenchConfig, cast: str = "autocast",
              precision: str = "fp32") -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32" or cast == "weights":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=cfg.device, dtype=DTYPES[precision])


def _prepare(model: nn.Module, cfg: BenchConfig, channels_last: bool = False, cast: str = "autocast",
             precision: str = "fp32") -> nn.Module:
    model = model.to(cfg.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cast == "weights":
        model = model.to(DTYPES[precision])
    return model


def _input(cfg: BenchConfig, batch_size: int, in_chans: int, img_size: int, channels_last: bool = False,
           cast: str = "autocast", precision: str = "fp32") -> torch.Tensor:
    generator = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(batch_size, in_chans, img_size, img_size, generator=generator).to(cfg.device)
    if cast == "weights":
        x = x.to(DTYPES[precision])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def infer_step(model: nn.Module, x: torch.Tensor, autocast) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad(), autocast():
            return model(x)

    return step


def train_step(model: nn.Module, x: torch.Tensor, num_classes: int, autocast) -> Callable[[], object]:
    """Forward, cross-entropy, backward, SGD update (timm benchmark.py's training step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = torch.randint(0, num_classes, (x.shape[0],), device=x.device)

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x).float(), target)
        loss.backward()
        optimizer.step()
        return loss

    return step


def _torch_output(cfg: BenchConfig, variant: Variant) -> Callable[[np.ndarray], np.ndarray]:
    """The eager PyTorch variant as a function of a float32 NCHW batch (for the parity check)."""
    module = variant.eager["infer"]
    autocast = _autocast(cfg, variant.cast, variant.precision)

    def run(x: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(x).to(cfg.device)
        if variant.cast == "weights":
            tensor = tensor.to(DTYPES[variant.precision])
        if variant.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast():
            out = module(tensor)
        out = out[0] if isinstance(out, list | tuple) else out
        return out.float().cpu().numpy()

    return run


def build_variants(cfg: BenchConfig, log: Callable[[str], None] = print,
                   workdir: Path | None = None) -> list[Variant]:
    """Create every model (and fused copy), count params/MACs, wrap it for timing (PyTorch) or convert it
    (another runtime, int8: into ``workdir``), and check its outputs against eager fp32. An entry that fails the
    check is logged and left out (a one-line error when that leaves nothing to time)."""
    torch.manual_seed(cfg.seed)
    variants: list[Variant] = []
    refused: list[str] = []  # entries whose outputs disagree with eager fp32: not timed; the others still are
    for entry in cfg.models:
        name = split_entry(entry)[0]
        img_size = resolve_img_size(cfg, name)
        base = create(name, img_size, cfg.num_classes).eval()
        ours = is_ours(name)
        stride = total_stride(base)
        if ours and img_size % stride:
            raise UserError(f"{name} needs an image size that is a multiple of {stride}, got {img_size}")
        params = sum(p.numel() for p in base.parameters())
        in_chans = input_channels(name)
        x1 = torch.randn(1, in_chans, img_size, img_size)
        forward_flops = count_flops(infer_step(base, x1, contextlib.nullcontext))
        train_flops, train_model = 0.0, None
        if cfg.train:  # one trainable copy: counted here, timed below
            train_model = create(name, img_size, cfg.num_classes).train()
            x2 = torch.randn(_TRAIN_FLOP_BATCH, in_chans, img_size, img_size)
            train_flops = count_flops(train_step(train_model, x2, cfg.num_classes, contextlib.nullcontext))
            train_flops /= _TRAIN_FLOP_BATCH
        builds: list[tuple[str, bool, nn.Module, int]] = []
        setup = model_setup(cfg, entry, ours)
        channels_last, cast = setup.channels_last, setup.cast
        converted = setup.runtime != runtimes.TORCH or setup.precision == "int8"
        reference = runtimes.reference_output(base, in_chans, img_size)
        if cfg.fuse in ("off", "both"):
            builds.append((entry, False, base, 0))
        if cfg.fuse in ("on", "both"):
            fused, summary = fuse_with_summary(base)
            if cfg.fuse == "on" or summary.changed:
                builds.append((entry + FUSED_SUFFIX if cfg.fuse == "both" else entry, True, fused, summary.bn_folded))
            else:
                log(f"{entry}: nothing to fuse, no separate fused variant")
        for label, fused, module, bn_folded in builds:
            variant = Variant(
                label, name, fused, ours, in_chans, img_size, params, forward_flops, train_flops, bn_folded,
                channels_last, cast, setup.runtime, setup.precision,
            )
            if converted:
                log(f"{label}: converting for {setup.runtime} {setup.precision}")
                variant.deployed = runtimes.build(module, setup.runtime, setup.precision, in_chans, img_size,
                                                  torch.get_num_threads(), workdir or Path("."))
                run_output = variant.deployed.run
            else:
                variant.eager["infer"] = _prepare(module, cfg, channels_last, cast, setup.precision).eval()
                if train_model is not None and not fused:
                    variant.eager["train"] = _prepare(train_model, cfg, channels_last, cast, setup.precision)
                variant.runnable = {mode: _compiled(m, cfg) for mode, m in variant.eager.items()}
                run_output = _torch_output(cfg, variant)
            try:
                variant.parity = runtimes.check_parity(label, setup.precision, run_output, reference)
            except UserError as err:
                refused.append(str(err))
                log(str(err))
                continue
            variants.append(variant)
    if refused and not variants:
        raise UserError(refused[0] if len(refused) == 1 else f"{refused[0]} (and {len(refused) - 1} more)")
    return variants


def _inductor_freezing() -> contextlib.AbstractContextManager:
    from torch._inductor import config as inductor_config  # imported only when asked for: it is slow to import

    return inductor_config.patch(freezing=True)


def _compiled(model: nn.Module, cfg: BenchConfig) -> nn.Module:
    if not cfg.compile:
        return model
    return torch.compile(model, fullgraph=cfg.fullgraph, mode=cfg.compile_mode)


# --------------------------------------------------------------------------------------------
# running


def case_key(label: str, mode: str, batch_size: int) -> str:
    return f"{label} {mode} b{batch_size}"


def _sync(cfg: BenchConfig) -> Callable[[], None]:
    if cfg.device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _case_step(cfg: BenchConfig, variant: Variant, mode: str, module: nn.Module | None,
               batch_size: int) -> Callable[[], object]:
    if variant.deployed is not None:  # a converted graph: float32 NCHW numpy in, whatever the precision
        x = _input(cfg, batch_size, variant.in_chans, variant.img_size).numpy()
        return variant.deployed.step(x)
    autocast = _autocast(cfg, variant.cast, variant.precision)
    x = _input(cfg, batch_size, variant.in_chans, variant.img_size, variant.channels_last, variant.cast,
               variant.precision)
    if mode == "infer":
        return infer_step(module, x, autocast)
    return train_step(module, x, cfg.num_classes, autocast)


def build_cases(cfg: BenchConfig, variants: list[Variant]) -> tuple[list[Case], dict[str, Callable]]:
    cases: list[Case] = []
    steps: dict[str, Callable] = {}
    for batch_size in cfg.batch_sizes:
        for mode in cfg.modes:
            for variant in variants:
                module = variant.runnable.get(mode)
                if module is None and not (variant.deployed is not None and mode == "infer"):
                    continue
                step = _case_step(cfg, variant, mode, module, batch_size)
                key = case_key(variant.label, mode, batch_size)
                cases.append(Case(key, step, batch_size, _sync(cfg)))
                steps[key] = step
    return cases, steps


def measure_memory(cfg: BenchConfig, variants: list[Variant], steps: dict[str, Callable]) -> dict[str, float]:
    """Peak MiB per case, from one extra step each (taken after the timing).

    On CUDA the timed (possibly compiled) step is measured by the allocator; on the CPU the
    tracker needs aten calls, which compiled code hides, so the eager module is measured.
    """
    device = torch.device(cfg.device)
    peaks: dict[str, float] = {}
    for variant in variants:  # a converted graph's memory is the runtime's own: not tracked (NaN in the report)
        for mode, module in variant.eager.items():
            for batch_size in cfg.batch_sizes:
                key = case_key(variant.label, mode, batch_size)
                step = steps[key]
                if device.type != "cuda" and cfg.compile:
                    step = _case_step(cfg, variant, mode, module, batch_size)
                peaks[key] = step_peak_bytes(module, step, device) / _MIB
    return peaks


def _peak_of(cfg: BenchConfig, precision: str, measured: dict[str, float]) -> float | None:
    """The peak a row's TFLOP/s is a fraction of: the measured one of its precision, else ``--peak-tflops``
    (int8 rows have no measured peak: no fraction)."""
    return measured.get(precision, cfg.peak_tflops if precision != "int8" else None)


def collect_rows(
    cfg: BenchConfig, variants: list[Variant], results: dict[str, Measurement], peaks: dict[str, float],
    peaks_tflops: dict[str, float] | None = None,
) -> list[Row]:
    peaks_tflops = peaks_tflops or {}
    reference = cfg.reference or cfg.models[0]
    rows: list[Row] = []
    for batch_size in cfg.batch_sizes:
        for mode in cfg.modes:
            ref_key = case_key(reference, mode, batch_size)
            for variant in variants:
                key = case_key(variant.label, mode, batch_size)
                if key not in results:
                    continue
                measurement = results[key]
                ratio = throughput_ratio(measurement, results[ref_key]) if ref_key in results else None
                flops = variant.forward_flops if mode == "infer" else variant.train_flops
                tflops = flops * measurement.img_per_s / 1e12
                peak = _peak_of(cfg, variant.precision, peaks_tflops)
                entry = paper_figures(variant.model_name)
                paper = getattr(entry, f"a100_b{batch_size}", None) if entry is not None else None
                rows.append(
                    Row(
                        label=variant.label,
                        model=variant.model_name,
                        ours=variant.ours,
                        fused=variant.fused,
                        mode=mode,
                        batch_size=batch_size,
                        img_size=variant.img_size,
                        img_per_s=measurement.img_per_s,
                        spread_pct=measurement.spread_pct,
                        ms_per_batch=measurement.ms_per_batch,
                        ratio=ratio.median if ratio else None,
                        ratio_low=ratio.low if ratio else None,
                        ratio_high=ratio.high if ratio else None,
                        reference=reference,
                        params_m=variant.params / 1e6,
                        macs_g=variant.forward_flops / 2 / 1e9,
                        tflops=tflops,
                        peak_fraction=tflops / peak if peak else None,
                        peak_mem_mib=peaks.get(key, float("nan")),
                        bn_folded=variant.bn_folded,
                        setup=setup_label(cfg, variant),
                        runtime=variant.runtime,
                        precision=variant.precision,
                        parity_max_abs=variant.parity.max_abs if variant.parity else None,
                        parity_cosine=variant.parity.cosine if variant.parity else None,
                        paper_name=entry.paper_name if entry is not None else None,
                        paper_a100_img_per_s=paper if mode == "infer" else None,
                        img_per_s_by_round=measurement.img_per_s_by_round(),
                    )
                )
    return rows


def machine_info(cfg: BenchConfig) -> dict[str, object]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info: dict[str, object] = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": cfg.device,
    }
    if cfg.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        info["loadavg_start"] = os.getloadavg()
    return info


def run(
    cfg: BenchConfig,
    on_step: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[Row], dict[str, object]]:
    """The whole benchmark: returns report rows and a metadata dict (machine, config, load, wall time).

    ``on_total(n)`` is told how many progress units ``on_step`` will report, once that is known.
    """
    check_config(cfg)
    if cfg.fast and cfg.fuse == "off":
        cfg = dataclasses.replace(cfg, fuse="on")
    meta = machine_info(cfg)
    started = time.perf_counter()
    measured: dict[str, float] = {}
    if cfg.measure_peak:
        from ascan.bench.peak import measure_peak

        meta["measured_peaks"] = []
        for precision in run_precisions(cfg):
            log(f"measuring the {precision} peak (large matmul and conv)")
            peak = measure_peak(DTYPES[precision], cfg.device)
            meta["measured_peaks"].append(dataclasses.asdict(peak) | {"tflops": peak.tflops})
            measured[precision] = peak.tflops
    with runtimes.scratch_folder() as workdir:
        variants = build_variants(cfg, log=log, workdir=Path(workdir))
        return _time_variants(cfg, variants, meta, measured, started, on_step, on_total)


def run_precisions(cfg: BenchConfig) -> list[str]:
    """The floating-point precisions the run's models use (each gets its own measured peak)."""
    used = {model_setup(cfg, entry, is_ours(split_entry(entry)[0])).precision for entry in cfg.models}
    return [p for p in DTYPES if p in used]


def _time_variants(cfg: BenchConfig, variants: list[Variant], meta: dict[str, object], measured: dict[str, float],
                   started: float, on_step: Callable[[str], None] | None,
                   on_total: Callable[[int], None] | None) -> tuple[list[Row], dict[str, object]]:
    cases, steps = build_cases(cfg, variants)
    if on_total is not None:
        on_total(plan_size(len(cases), cfg.warmup, cfg.repeats) + 1)  # + 1: the memory pass
    # Compiles happen at each case's first call, inside the timing loop: the freezing switch wraps it.
    with _inductor_freezing() if cfg.freeze else contextlib.nullcontext():
        results = run_interleaved(cases, warmup=cfg.warmup, iters=cfg.iters, repeats=cfg.repeats, on_step=on_step)
    if on_step is not None:
        on_step("peak memory")
    peaks = measure_memory(cfg, variants, steps)
    with contextlib.suppress(OSError):
        meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    meta["precision"] = cfg.precision
    meta["runtime"] = cfg.runtime
    meta["versions"] = runtime_versions(variants)
    return collect_rows(cfg, variants, results, peaks, measured), meta


def runtime_versions(variants: list[Variant]) -> dict[str, str]:
    """Versions of the runtimes the run used (torch and timm are in the machine info)."""
    versions: dict[str, str] = {}
    for runtime in {v.runtime for v in variants} - {runtimes.TORCH}:
        module = __import__(runtime)
        versions[runtime] = getattr(module, "__version__", "?")
    return versions
