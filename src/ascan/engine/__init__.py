"""One training engine for every task: classification, dense prediction, generation.

A task supplies a training step and an evaluation (:class:`Task`); :func:`fit` supplies the rest —
autocast, the optimizer step with clipping, timm's EMA and per-step schedule, DDP, resumable atomic
checkpoints (every epoch, every N steps/minutes, on SIGTERM/Ctrl-C), ``metrics.csv``, ``curves.png``,
``summary.json``. See :mod:`ascan.engine.task` for the protocol and :mod:`ascan.engine.loop` for the loop (:func:`fit`).
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the engine module that defines it, imported on first use: the configs import
# ascan.engine.settings (light), and that must not load the training loop (every --help imports a config).
_WHERE = {
    "DistInfo": "distributed", "all_reduce_sum": "distributed", "barrier": "distributed",
    "gather_objects": "distributed", "FitResult": "loop", "Loop": "loop", "RunInfo": "loop", "build_loop": "loop",
    "evaluate_models": "loop", "fit": "loop", "fit_run": "loop", "train_one_epoch": "loop", "train_step": "loop",
    "CONFIG_NAME": "rundir", "Run": "rundir", "RunFolder": "rundir", "holds_run": "rundir", "open_run": "rundir",
    "open_run_folder": "rundir", "CURVES_PNG": "runlog", "METRICS_CSV": "runlog", "SUMMARY_JSON": "runlog",
    "plot_curves": "runlog", "write_metrics_csv": "runlog", "Environment": "runtime", "autocast_dtype": "runtime",
    "resolve_device": "runtime", "seed_all": "runtime", "session": "runtime", "EpochBatchSampler": "sampler",
    "batches_per_epoch": "sampler", "build_optimizer": "schedule", "cosine_with_warmup": "schedule",
    "EpochOptimSettings": "settings", "EpochRunSettings": "settings", "FitConfig": "settings",
    "OptimSettings": "settings", "RunSettings": "settings", "fit_config": "settings", "CHECKPOINT_NAME": "state",
    "TrainingState": "state", "checkpoint_path": "state", "load_checkpoint": "state", "load_model_state": "state",
    "load_weights_file": "state", "save_checkpoint": "state", "StopFlag": "stop", "StepOutput": "task",
    "Task": "task", "move_to": "task"
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"ascan.engine.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ascan.engine' has no attribute {name!r}")


__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "CURVES_PNG", "DistInfo", "Environment", "EpochBatchSampler",
           "EpochOptimSettings", "EpochRunSettings", "FitConfig", "FitResult", "Loop", "METRICS_CSV", "OptimSettings",
           "Run", "RunFolder", "RunInfo", "RunSettings", "SUMMARY_JSON", "StepOutput", "StopFlag", "Task",
           "TrainingState", "all_reduce_sum", "autocast_dtype", "barrier", "batches_per_epoch", "build_loop",
           "build_optimizer", "checkpoint_path", "cosine_with_warmup", "evaluate_models", "fit", "fit_config",
           "fit_run", "gather_objects", "holds_run", "load_checkpoint", "load_model_state", "load_weights_file",
           "move_to", "open_run", "open_run_folder", "plot_curves", "resolve_device", "save_checkpoint", "seed_all",
           "session", "train_one_epoch", "train_step", "write_metrics_csv"]
