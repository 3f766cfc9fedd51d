"""The shared training engine on toy tasks: steps against a hand-written loop, resume, run folders, curves."""

from __future__ import annotations

import csv
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from ascan.config import FRACTION, config_to_dict, load_config, setting, with_defaults
from ascan.engine import (
    EpochBatchSampler,
    EpochOptimSettings,
    EpochRunSettings,
    FitConfig,
    RunInfo,
    StepOutput,
    build_optimizer,
    cosine_with_warmup,
    fit,
    fit_config,
    load_checkpoint,
    move_to,
    open_run_folder,
    session,
)
from ascan.engine.runlog import metric_panels, plot_curves
from ascan.engine.sampler import EPOCH_SEED_STRIDE
from ascan.errors import UserError

N_SAMPLES, BATCH, FEATURES, LR = 24, 4, 3, 0.05


class PointSet(Dataset):
    """Detection-like samples: an 'image' of variable length and a target dict."""

    def __init__(self, n: int = N_SAMPLES):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, FEATURES, generator=gen)
        self.y = torch.randn(n, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {"value": self.y[i], "id": i}


def list_collate(samples):
    images, targets = zip(*samples, strict=True)
    return list(images), list(targets)


class LossDictModel(nn.Module):
    """Takes a list of inputs and a list of target dicts, returns a dict of losses (torchvision-style)."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(FEATURES, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, images, targets):
        pred = self.linear(self.drop(torch.stack(images))).squeeze(1)
        y = torch.stack([t["value"] for t in targets])
        return {"mse": ((pred - y) ** 2).mean(), "l1": (pred - y).abs().mean()}


@dataclass
class LossDictTask:
    collate_fn = staticmethod(list_collate)
    seen_autocast: list | None = None

    def training_step(self, model, batch, device):
        images, targets = move_to(batch, device)
        if self.seen_autocast is not None:
            self.seen_autocast.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        losses = model(images, targets)
        return StepOutput(sum(losses.values()), len(images), {k: v.item() for k, v in losses.items()})

    def evaluate(self, model, device, dtype):
        data = PointSet()
        pred = model.linear(data.x.to(device)).squeeze(1)
        return {"mse": ((pred - data.y) ** 2).mean().item()}


def _run(folder: Path, *, epochs: int = 2, resume=None, callback=None, overwrite=False, dropout: float = 0.0,
         task=None, **settings) -> tuple:
    torch.manual_seed(0)
    model = LossDictModel(dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    total = epochs * (N_SAMPLES // BATCH)
    scheduler = cosine_with_warmup(optimizer, total, 0, LR, LR)  # constant lr
    cfg = FitConfig(epochs=epochs, batch_size=BATCH, amp=settings.pop("amp", "off"),
                    progress=settings.pop("progress", False),
                    checkpoint_every_minutes=None, **settings)
    with session("cpu") as env, open_run_folder(folder, env.dist, resume=resume is not None,
                                                overwrite=overwrite) as run:
        result = fit(task or LossDictTask(), model, optimizer, scheduler, PointSet(), cfg, env, run,
                     info=RunInfo(checkpoint_extra={"config": {}}), resume=resume, step_callback=callback)
    return result, model


def test_steps_match_a_hand_written_loop(tmp_path):
    """Loss dicts, list batches from a collate_fn: the weights and logged averages of plain SGD."""
    result, model = _run(tmp_path / "run")
    torch.manual_seed(0)
    reference = LossDictModel()
    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    data = PointSet()
    mse_sums = []
    for epoch in range(2):
        seed = 0 * EPOCH_SEED_STRIDE + epoch  # FitConfig.seed = 0
        order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(seed))
        mse_sum = 0.0
        for b in range(N_SAMPLES // BATCH):
            idx = order[b * BATCH:(b + 1) * BATCH]
            pred = reference.linear(data.x[idx]).squeeze(1)
            mse, l1 = ((pred - data.y[idx]) ** 2).mean(), (pred - data.y[idx]).abs().mean()
            opt.zero_grad()
            (mse + l1).backward()
            opt.step()
            mse_sum += mse.item() * BATCH
        mse_sums.append(mse_sum / N_SAMPLES)
    assert result.completed and result.step == 2 * (N_SAMPLES // BATCH)
    torch.testing.assert_close(model.linear.weight, reference.linear.weight)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [float(r["train_mse"]) for r in rows] == pytest.approx(mse_sums, rel=1e-5)
    final_mse = ((reference.linear(data.x).squeeze(1) - data.y) ** 2).mean().item()
    assert float(rows[-1]["test_mse"]) == pytest.approx(final_mse, rel=1e-5)
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "curves.png").stat().st_size


def test_autocast_dtype_reaches_the_step(tmp_path):
    seen: list = []
    _run(tmp_path / "run", epochs=1, amp="bf16", task=LossDictTask(seen_autocast=seen))
    assert seen and all(d == torch.bfloat16 for d in seen)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Crash(Exception):
    pass


def _crash_at(step_to_crash: int):
    def callback(step: int) -> None:
        if step == step_to_crash:
            raise Crash

    return callback


def test_crash_resumes_from_the_periodic_checkpoint_bit_exactly(tmp_path):
    """Dropout draws from the torch RNG: equal weights need the restored stream and sampler position."""
    _, full = _run(tmp_path / "full", epochs=3, dropout=0.5, ema_decay=0.9)
    with pytest.raises(Crash):
        _run(tmp_path / "cut", epochs=3, dropout=0.5, ema_decay=0.9, checkpoint_every_steps=4,
             callback=_crash_at(11))
    checkpoint = load_checkpoint(tmp_path / "cut")
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["batch"]) == (8, 1, 2)
    result, resumed = _run(tmp_path / "cut", epochs=3, dropout=0.5, ema_decay=0.9,
                           resume=checkpoint)
    assert result.completed and result.step == 18
    for key, value in _weights(full).items():
        assert torch.equal(_weights(resumed)[key], value), key


def test_max_steps_ends_the_run_and_a_longer_one_continues_it(tmp_path):
    """max_steps mid-epoch completes the run (fractional epoch); raising it continues to the same weights."""
    _, full = _run(tmp_path / "full", dropout=0.5)
    short, _ = _run(tmp_path / "cut", dropout=0.5, max_steps=9)
    assert short.completed and short.step == 9 and short.metrics["epoch"] == pytest.approx(1.5)
    assert "test_mse" in short.metrics
    longer, resumed = _run(tmp_path / "cut", dropout=0.5, resume=load_checkpoint(tmp_path / "cut"))
    assert longer.step == 12
    for key, value in _weights(full).items():
        assert torch.equal(_weights(resumed)[key], value), key


def test_stop_signal_on_an_epochs_last_step_closes_the_epoch_first(tmp_path):
    def sigterm_at_6(step: int) -> None:
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    _, full = _run(tmp_path / "full", dropout=0.5)
    cut, _ = _run(tmp_path / "cut", dropout=0.5, callback=sigterm_at_6)
    assert not cut.completed and cut.step == 6 and len(cut.history) == 1
    checkpoint = load_checkpoint(tmp_path / "cut")
    assert (checkpoint["epoch"], checkpoint["batch"]) == (1, 0)
    _, resumed = _run(tmp_path / "cut", dropout=0.5, resume=checkpoint)
    for key, value in _weights(full).items():
        assert torch.equal(_weights(resumed)[key], value), key


# ---- Run folders ---------------------------------------------------------------------------------


def test_a_folder_holding_a_run_is_refused_unless_overwritten(tmp_path):
    _run(tmp_path / "run", epochs=1)
    with pytest.raises(UserError, match="already holds a run.*--resume.*--overwrite") as info:
        _run(tmp_path / "run", epochs=1)
    assert "\n" not in str(info.value)
    result, _ = _run(tmp_path / "run", epochs=1, overwrite=True)
    assert result.completed


def test_two_processes_cannot_train_into_one_folder(tmp_path):
    with session("cpu") as env, open_run_folder(tmp_path / "run", env.dist):
        assert (tmp_path / "run" / "run.lock").read_text() == str(os.getpid())
        with pytest.raises(UserError, match="in use by another training process") as info:
            with open_run_folder(tmp_path / "run", env.dist):
                pass
        assert "\n" not in str(info.value)
    with session("cpu") as env, open_run_folder(tmp_path / "run", env.dist):  # released after the first
        pass


# ---- Curves, settings ----------------------------------------------------------------------------


def test_curves_plot_whatever_metrics_the_rows_have(tmp_path):
    history = [{"epoch": e, "step": 10 * e, "lr": 0.1, "train_loss": 1 / e, "train_loss_mask": 0.5 / e,
                "test_miou": 10.0 * e, "ema_miou": 11.0 * e, "test_map": math.nan if e == 1 else 0.3}
               for e in (1, 2, 3)]
    assert metric_panels(history) == {"loss": ["train_loss"], "loss_mask": ["train_loss_mask"],
                                      "miou": ["test_miou", "ema_miou"], "map": ["test_map"]}
    plot_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs, message", [
    ({"checkpoint_every_minutes": 0.0}, "checkpoint_every_minutes must be in"),
    ({"ema_decay": 1.0}, "ema_decay must be in"),
    ({"amp": "fp8"}, "amp must be one of"),
    ({"epochs": 0}, "epochs must be in"),
])
def test_fit_config_checks_its_ranges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FitConfig(**kwargs)


def test_user_config_ranges_are_one_line_user_errors():
    @dataclass
    class Cfg:
        rate: float = setting(0.5, FRACTION)

    assert load_config(Cfg, None, ["rate=1"]).rate == 1.0
    with pytest.raises(UserError, match=r"rate must be in \[0, 1\], got 1.5"):
        load_config(Cfg, None, ["rate=1.5"])
    with pytest.raises(UserError, match="expects float"):
        load_config(Cfg, None, ["rate=abc"])


def test_with_defaults_changes_inherited_defaults_only():
    """Other defaults for inherited fields: their ranges and places stay, other classes keep theirs."""
    @dataclass
    @with_defaults(lr=4e-3, epochs=10)
    class Optim(EpochOptimSettings):
        extra: float = setting(0.5, FRACTION)

    assert Optim().lr == 4e-3 and Optim().epochs == 10 and EpochOptimSettings().lr == 1e-3
    assert list(config_to_dict(Optim())) == [*config_to_dict(EpochOptimSettings()), "extra"]
    assert load_config(Optim, None, ["lr=0.1"]).lr == 0.1
    with pytest.raises(UserError, match=r"lr must be in \[0, 10\], got 11"):
        load_config(Optim, None, ["lr=11"])
    again = dataclass(with_defaults(extra=0.25)(type("Again", (Optim,), {})))
    assert again().extra == 0.25 and again().lr == 4e-3
    with pytest.raises(TypeError, match="'nope' is not a field it inherits"):
        with_defaults(nope=1)(type("Other", (EpochOptimSettings,), {}))


def test_fit_config_reads_each_setting_from_its_section():
    @dataclass
    class Data:
        batch_size: int = 6
        num_workers: int = 2

    @dataclass
    @with_defaults(max_steps=9, seed=3)
    class Cfg(EpochRunSettings):
        data: Data = field(default_factory=Data)
        optim: EpochOptimSettings = field(default_factory=lambda: EpochOptimSettings(epochs=4, clip_grad=None,
                                                                                     ema_decay=0.5))

    loop = fit_config(Cfg())
    assert (loop.epochs, loop.batch_size, loop.num_workers, loop.max_steps, loop.seed) == (4, 6, 2, 9, 3)
    assert (loop.clip_grad, loop.ema_decay, loop.ema_warmup, loop.checkpoint_every_minutes) == (None, 0.5, True, 30.0)
    assert loop.channels_last is False and loop.save_rank_weights is False  # not in Cfg: FitConfig's defaults
    given = fit_config(Cfg(), epochs=7, max_steps=None)
    assert (given.epochs, given.max_steps, given.batch_size) == (7, None, 6)
    with pytest.raises(TypeError, match="nope"):
        fit_config(Cfg(), nope=1)


def test_build_optimizer_follows_the_settings():
    """AdamW without weight decay on biases; linear warm-up from warmup_lr, cosine to min_lr (or a constant lr)."""
    settings = EpochOptimSettings(lr=0.1, weight_decay=0.01, warmup_lr=0.0, min_lr=0.02)
    optimizer, scheduler = build_optimizer(nn.Linear(3, 2), settings, total_steps=10, warmup_steps=2)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sorted(group["weight_decay"] for group in optimizer.param_groups) == [0.0, 0.01]
    lrs = []
    for step in range(11):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.05) and lrs[2] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.02) and all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    optimizer, scheduler = build_optimizer(nn.Linear(3, 2), settings, 10, 0, opt="sgd", min_lr=0.1)
    scheduler.step_update(7)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_sampler_batches_cover_each_epoch_once():
    sampler = EpochBatchSampler(25, 4, seed=2)
    seen = [i for batch in sampler for i in batch]
    assert len(seen) == len(set(seen)) == 24


def test_the_lock_file_goes_when_the_run_ends_finished_or_crashed(tmp_path):
    """run.lock is removed while still held: on a normal end and on an exception (kill -9 cannot: documented)."""
    with session("cpu") as env, open_run_folder(tmp_path / "done", env.dist):
        assert (tmp_path / "done" / "run.lock").is_file()
    assert not (tmp_path / "done" / "run.lock").exists()
    with pytest.raises(RuntimeError, match="crash"), session("cpu") as env, \
            open_run_folder(tmp_path / "crashed", env.dist):
        raise RuntimeError("crash")
    assert not (tmp_path / "crashed" / "run.lock").exists()
    with session("cpu") as env, open_run_folder(tmp_path / "done", env.dist):  # and the folder can be claimed again
        assert (tmp_path / "done" / "run.lock").read_text() == str(os.getpid())



@pytest.mark.parametrize(("settings", "hint"), [({}, "--epochs 4"), ({"max_steps": 3}, "--steps 6")])
def test_resuming_a_finished_run_suggests_the_budget_option(tmp_path, capsys, settings, hint):
    """The nothing-to-do hint names the option that extends the run (epochs, or steps for a step-counted run)."""
    from ascan.engine import load_checkpoint

    _run(tmp_path / "run", **dict(settings))
    capsys.readouterr()
    _run(tmp_path / "run", resume=load_checkpoint(tmp_path / "run"), **dict(settings))
    err = capsys.readouterr().err
    assert "nothing to do" in err and err.strip().endswith(f"--resume {tmp_path / 'run'} {hint}"), err


def test_a_step_counted_runs_bar_counts_its_steps_not_the_epoch(tmp_path, capsys):
    """max_steps shorter than an epoch: the bar's total is the step budget (a 3-step run shows n/3)."""
    _run(tmp_path / "run", epochs=1, max_steps=3, progress=True)
    err = capsys.readouterr().err
    assert "0/3 " in err and f"/{N_SAMPLES // BATCH} " not in err, err


def test_loop_settings_shared_with_the_task_configs_are_written_once():
    """FitConfig takes the defaults and ranges of the settings the task configs also have from those configs: the
    same value, and the same declared range (a changed default in RunSettings reaches the engine)."""
    import dataclasses

    from ascan.engine.settings import EpochOptimSettings, EpochRunSettings, FitConfig, OptimSettings, RunSettings

    fit = {f.name: f for f in dataclasses.fields(FitConfig)}
    for cls in (RunSettings, EpochRunSettings, OptimSettings, EpochOptimSettings):
        for f in dataclasses.fields(cls):
            if f.name in fit and f.name not in ("clip_grad",):  # the engine's library default: no clipping
                assert fit[f.name].default == f.default, f.name
                assert fit[f.name].metadata == f.metadata, f.name
    with pytest.raises(ValueError, match="seed"):
        FitConfig(seed=-1)  # RunSettings' seed range, enforced by the engine too


def test_a_session_puts_threads_and_determinism_back():
    """A run inside a longer-lived process (a test session, a notebook) leaves no global torch state behind: the
    determinism it switched on changed the graphs torch.compile traced for unrelated code afterwards."""
    from ascan.engine import session

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with session("cpu", threads=threads + 1, deterministic=not deterministic):
        assert torch.get_num_threads() == threads + 1
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
