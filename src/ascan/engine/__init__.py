"""One training engine for every task: classification, dense prediction, generation.

A task supplies a training step and an evaluation (:class:`Task`); :func:`fit` supplies the rest —
autocast, the optimizer step with clipping, timm's EMA and per-step schedule, DDP, resumable atomic
checkpoints (every epoch, every N steps/minutes, on SIGTERM/Ctrl-C), ``metrics.csv``, ``curves.png``,
``summary.json``. See :mod:`ascan.engine.task` for the protocol and :mod:`ascan.engine.loop` for the loop (:func:`fit`).
"""

from ascan.engine.distributed import DistInfo, all_reduce_sum, barrier, gather_objects
from ascan.engine.loop import (
    FitResult,
    Loop,
    RunInfo,
    build_loop,
    evaluate_models,
    fit,
    fit_run,
    train_one_epoch,
    train_step,
)
from ascan.engine.rundir import CONFIG_NAME, Run, RunFolder, holds_run, open_run, open_run_folder
from ascan.engine.runlog import CURVES_PNG, METRICS_CSV, SUMMARY_JSON, plot_curves, write_metrics_csv
from ascan.engine.runtime import Environment, autocast_dtype, resolve_device, seed_all, session
from ascan.engine.sampler import EpochBatchSampler, batches_per_epoch
from ascan.engine.schedule import build_optimizer, cosine_with_warmup
from ascan.engine.settings import (
    EpochOptimSettings,
    EpochRunSettings,
    FitConfig,
    OptimSettings,
    RunSettings,
    fit_config,
)
from ascan.engine.state import (
    CHECKPOINT_NAME,
    TrainingState,
    checkpoint_path,
    load_checkpoint,
    load_model_state,
    load_weights_file,
    save_checkpoint,
)
from ascan.engine.stop import StopFlag
from ascan.engine.task import StepOutput, Task, move_to

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "CURVES_PNG", "DistInfo", "Environment", "EpochBatchSampler",
           "EpochOptimSettings", "EpochRunSettings", "FitConfig", "FitResult", "Loop", "METRICS_CSV", "OptimSettings",
           "Run", "RunFolder", "RunInfo", "RunSettings", "SUMMARY_JSON", "StepOutput", "StopFlag", "Task",
           "TrainingState", "all_reduce_sum", "autocast_dtype", "barrier", "batches_per_epoch", "build_loop",
           "build_optimizer", "checkpoint_path", "cosine_with_warmup", "evaluate_models", "fit", "fit_config",
           "fit_run", "gather_objects", "holds_run", "load_checkpoint", "load_model_state", "load_weights_file",
           "move_to", "open_run", "open_run_folder", "plot_curves", "resolve_device", "save_checkpoint", "seed_all",
           "session", "train_one_epoch", "train_step", "write_metrics_csv"]
