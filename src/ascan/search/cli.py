"""``ascan search``: latency-aware layout search over the layout grammar (issue 15).

    ascan search --budget-ms 120 --trials 40                     # new search in runs/search
    ascan search --budget-ratio 0.85 --trials 40 --output runs/s  # budget: 85 % of C1's predicted latency
    ascan search --resume --output runs/s                        # continue a killed search (same options)
    ascan search --resume --output runs/s --phase trials         # a second worker on the same study
    ascan search --storage postgresql://u@host/db --study-name s --phase trials   # a worker on another machine
    ascan search --phase report --resume --output runs/s --final-top 3 --final-seeds 3

Phases: ``trials`` runs proxy trials until the study holds ``--trials`` finished ones (all workers together);
``report`` measures every trained layout and the published/symmetric references end to end, writes
``trials.csv``, ``pareto.png``, then fully trains the best ``--final-top`` layouts and the reference
(``--final-seeds`` seeds each) and writes ``final.csv`` and ``winners.txt``; ``all`` does both.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from ascan.config import AT_LEAST_ONE, Range
from ascan.errors import UserError
from ascan.paths import check_output_folder
from ascan.runargs import doc_parser, ranged

DEFAULT_OUTPUT = "runs/search"
DEFAULT_STUDY = "ascan-search"
DEFAULT_REFERENCE = "CC-CCCT-CCTT-CTTT"  # the C1-shaped default of ascan_nano and the main job
DB_NAME, LATENCY_JSON, REFERENCES_JSON, FINAL_CSV = "study.db", "latency.json", "references.json", "final.csv"
SEARCH_FILES = (DB_NAME, LATENCY_JSON, REFERENCES_JSON, FINAL_CSV, "latency_validation.csv", "trials.csv", "pareto.png",
                "winners.txt")
SEARCH_DIRS = ("trials", "final", "references")
TRIALS_RANGE = Range(1, 100_000)
BUDGET_MS_RANGE = Range(0, 1e6, low_open=True)
RATIO_RANGE = Range(0, 10, low_open=True)
TOP_RANGE = Range(0, 100)
SEEDS_RANGE = Range(1, 20)
BATCH_RANGE = Range(1, 4096)
REPEATS_RANGE = Range(1, 100)
DEPTH_RANGE = Range(1, 16)
CALIBRATION_LAYOUTS = 4
VALIDATE_RANGE = Range(1, 1000)
FINAL_EPOCHS_RANGE = Range(1, 10_000)
SEED_RANGE = Range(0, 2**31 - 1)
VALIDATION_CSV = "latency_validation.csv"
SAMPLE_TRIES = 200_000


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("ascan search", __doc__)
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="search folder (study.db, latency.json, trials/, ...)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="join the study already in --output / --storage")
    g.add_argument("--overwrite", action="store_true", help="delete a previous search in --output first")
    p.add_argument("--storage", help="Optuna database URL (default: sqlite:///<output>/study.db)")
    p.add_argument("--study-name", default=DEFAULT_STUDY)
    p.add_argument("--phase", choices=("all", "trials", "report", "validate"), default="all")
    p.add_argument("--validate-layouts", type=ranged(int, VALIDATE_RANGE), default=20,
                   help="held-out random layouts the validate phase measures against the prediction")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--budget-ms", type=ranged(float, BUDGET_MS_RANGE), help="latency budget, ms per batch (predicted)")
    b.add_argument("--budget-ratio", type=ranged(float, RATIO_RANGE),
                   help="budget as a fraction of --reference's predicted latency")
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help="reference layout for --budget-ratio and the final")
    p.add_argument("--letters", default="C,CT,CT,CT", help="letters each stage may hold, comma-separated")
    p.add_argument("--depths", default="1-2,1-4,1-4,1-4", help="min-max blocks per stage, comma-separated")
    p.add_argument("--no-rules", action="store_true", help="allow layouts that break the paper's rules")
    p.add_argument("--trials", type=ranged(int, TRIALS_RANGE), default=40,
                   help="finished trials the study should hold (all workers)")
    p.add_argument("--seed", type=ranged(int, SEED_RANGE), default=0, help="sampler seed")
    p.add_argument("--config", help="base training YAML (default: the main job's configs/fashion_mnist.yaml)")
    p.add_argument("--proxy-train", type=ranged(int, AT_LEAST_ONE), default=6000,
                   help="training images per proxy trial")
    p.add_argument("--proxy-eval", type=ranged(int, AT_LEAST_ONE), default=2000,
                   help="validation images (the last 10k of the training split) the proxy scores on")
    p.add_argument("--proxy-epochs", type=ranged(int, AT_LEAST_ONE), default=3)
    p.add_argument("--final-top", type=ranged(int, TOP_RANGE), default=3,
                   help="best layouts trained fully in the report phase")
    p.add_argument("--final-seeds", type=ranged(int, SEEDS_RANGE), default=1)
    p.add_argument("--final-epochs", type=ranged(int, FINAL_EPOCHS_RANGE),
                   help="epochs of the full trainings (default: the config's)")
    p.add_argument("--batch", type=ranged(int, BATCH_RANGE), default=256, help="batch of the latency measurements")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16", help="latency dtype (bf16: autocast)")
    p.add_argument("--timing-repeats", type=ranged(int, REPEATS_RANGE), default=5,
                   help="interleaved rounds per latency measurement")
    return p


def parse_priors(letters: str, depths: str, rules: bool):
    from ascan.layers.registry import BLOCKS
    from ascan.search.space import Priors

    stages = tuple(s.strip() for s in letters.split(","))
    try:
        ranges = []
        for text in depths.split(","):
            lo, _, hi = text.strip().partition("-")
            ranges.append((int(lo), int(hi or lo)))
    except ValueError:
        raise UserError(f"--depths {depths!r}: expected min-max per stage, e.g. 1-2,1-4,1-4,1-4") from None
    if len(ranges) != len(stages):
        raise UserError(f"--depths has {len(ranges)} stages but --letters has {len(stages)}")
    for s in stages:
        if not s or any(ch not in BLOCKS for ch in s):
            raise UserError(f"--letters stage {s!r}: use registered letters {''.join(sorted(BLOCKS))}")
    for lo, hi in ranges:
        if not (lo in DEPTH_RANGE and hi in DEPTH_RANGE and lo <= hi):
            raise UserError(f"--depths {lo}-{hi}: need min <= max, both in {DEPTH_RANGE}")
    return Priors(stages, tuple(ranges), rules)


def prepare_folder(out: Path, resume: bool, overwrite: bool, storage: str | None) -> None:
    """Never overwrite a previous search silently: --resume joins it, --overwrite deletes it."""
    check_output_folder(out, "search folder")
    held = [n for n in (*SEARCH_FILES, *SEARCH_DIRS) if (out / n).exists()]
    if held and not (resume or overwrite):
        raise UserError(f"search folder {out} already holds a search ({', '.join(held)}); "
                        "use --resume to continue it or --overwrite to start over")
    if overwrite:
        for name in SEARCH_FILES:
            (out / name).unlink(missing_ok=True)
        for name in SEARCH_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    if resume and not held and storage is None:
        raise UserError(f"--resume: search folder {out} holds no search")
    out.mkdir(parents=True, exist_ok=True)


def latency_setting(args: argparse.Namespace, proxy):
    """The latency setting of the proxy's model (widths etc. from the training config)."""
    from ascan.classify.config import load_config
    from ascan.search.latency import Setting
    from ascan.search.proxy import base_config

    kw = load_config(base_config(proxy)).model.kwargs
    return Setting(widths=tuple(kw.get("widths", (16, 32, 64, 128))), stem_width=kw.get("stem_width", 16),
                   head_width=kw.get("head_width", 128), block_kwargs=kw.get("block_kwargs", {}),
                   batch=args.batch, dtype=args.dtype)


def calibration_layouts(priors, reference: str) -> list[str]:
    """The whole models the table's scale is calibrated on: the reference and a few random layouts."""
    from ascan.search.space import sample_layouts

    return list(dict.fromkeys([reference, *sample_layouts(priors, CALIBRATION_LAYOUTS - 1, seed=1)]))


def _table(out: Path, setting, priors, plan, reference: str):
    from ascan.search.latency import load_or_build

    letters = "".join(sorted(set("".join(priors.letters)) | set(reference.replace("-", ""))))
    calibration = calibration_layouts(priors, reference)
    print(f"ascan search: latency table ({setting.dtype}, batch {setting.batch}) -> {out / LATENCY_JSON}")
    return load_or_build(out / LATENCY_JSON, setting, calibration, plan, letters)


def candidates(priors, table, budget_ms: float) -> list[str]:
    from ascan.search.space import enumerate_layouts, sample_layouts
    from ascan.search.study import MAX_CANDIDATES

    space = []
    for layout in enumerate_layouts(priors):
        space.append(layout)
        if len(space) > MAX_CANDIDATES * 4:  # too many to list: sample instead
            space = sample_layouts(priors, MAX_CANDIDATES * 4, seed=0, max_tries=SAMPLE_TRIES)
            break
    return sorted(lay for lay in space if table.predict_ms(lay) <= budget_ms)[:MAX_CANDIDATES]


def proxy_objective(out: Path, proxy):
    import optuna

    from ascan.search.proxy import Pruned, run_proxy

    def train(trial: optuna.Trial, layout: str) -> float:
        def report(epoch: int, top1: float) -> bool:
            trial.report(top1, epoch)
            return trial.should_prune()

        t0 = time.perf_counter()
        try:
            top1 = run_proxy(layout, out / "trials" / f"{trial.number:04d}", proxy, report)
        except Pruned:
            raise optuna.TrialPruned() from None
        finally:
            trial.set_user_attr("proxy_s", time.perf_counter() - t0)
        print(f"ascan search: trial {trial.number} {layout}: proxy top-1 {top1:.2f} %", flush=True)
        return top1

    return train


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ascan.layout import LayoutError, parse_layout  # the block registry imports torch: not for --help

    try:
        parse_layout(args.reference)
    except LayoutError as err:
        raise UserError(f"--reference: {err}") from None
    priors = parse_priors(args.letters, args.depths, not args.no_rules)
    from ascan.search.proxy import ProxySettings

    try:
        proxy = ProxySettings(args.proxy_train, args.proxy_eval, args.proxy_epochs, config=args.config)
    except ValueError as err:
        raise UserError(f"proxy: {err}") from None
    if args.budget_ms is None and args.budget_ratio is None and not args.resume and args.phase != "validate":
        raise UserError("give --budget-ms or --budget-ratio")
    out = Path(args.output)
    prepare_folder(out, args.resume, args.overwrite, args.storage)

    import optuna

    from ascan.search.latency import TimingPlan
    from ascan.search.study import (
        BUDGET_ATTR,
        check_storage,
        database_errors,
        make_objective,
        open_study,
        run_worker,
        sqlite_url,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = args.storage or sqlite_url(out / DB_NAME)
    if args.phase != "validate":  # before minutes of latency measurement: a bad URL or study file is one line now
        check_storage(url, "--storage" if args.storage else "study file")
    plan = TimingPlan(repeats=args.timing_repeats)
    table = _table(out, latency_setting(args, proxy), priors, plan, args.reference)
    if args.phase == "validate":
        validate_phase(out, table, latency_setting(args, proxy), priors, plan, args.validate_layouts, args.reference)
        return 0
    budget = args.budget_ms if args.budget_ms is not None else (
        args.budget_ratio * table.predict_ms(args.reference) if args.budget_ratio is not None else None)
    cands = candidates(priors, table, budget) if budget is not None else None
    if cands is not None and not cands:
        raise UserError(f"no layout under the priors is predicted within {budget:.1f} ms "
                        f"(the reference {args.reference} is {table.predict_ms(args.reference):.1f} ms)")
    with database_errors(url):
        study = open_study(url, args.study_name, cands, budget, seed=args.seed)
    budget = study.user_attrs.get(BUDGET_ATTR, budget)
    print(f"ascan search: study {args.study_name!r} at {url}: {len(study.user_attrs['candidates'])} candidates "
          f"under {budget:.1f} ms predicted; {len(study.trials)} trials so far")
    if args.phase in ("all", "trials"):
        objective = make_objective(study, url, table.predict_ms, budget, proxy_objective(out, proxy))
        with database_errors(url):
            run_worker(study, objective, args.trials, url=url)
    if args.phase in ("all", "report"):
        report_phase(args, out, study, table, proxy, plan)
    return 0


def _references() -> dict[str, str]:
    from ascan.models.ascan import TABLE3_LAYOUTS

    return {name.upper(): lay for name, lay in TABLE3_LAYOUTS.items()}


def best_layouts(trials, top: int) -> list[str]:
    """The ``top`` layouts of the highest proxy top-1 among *complete* trials (a pruned trial's value is its
    top-1 at an earlier epoch, not comparable)."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return [t.user_attrs["layout"] for t in sorted(complete, key=lambda t: -t.value)[:top]]


def report_phase(args, out: Path, study, table, proxy, plan) -> None:
    from ascan.layout import check_asymmetric

    """Measure, plot, fully train the best few and the reference, and name the winners."""
    from optuna.trial import TrialState

    from ascan.atomic import atomic_write_text
    from ascan.search.latency import measure_models
    from ascan.search.proxy import run_proxy
    from ascan.search.report import (
        PARETO_PNG,
        TRIALS_CSV,
        WINNERS_TXT,
        Point,
        plot_pareto,
        write_trials_csv,
        write_winners,
    )
    from ascan.search.study import trained_trials

    setting = latency_setting(args, proxy)
    refs_path = out / REFERENCES_JSON
    refs = json.loads(refs_path.read_text()) if refs_path.is_file() else {}
    for name, layout in _references().items():  # the references get the same proxy as every trial
        if name not in refs:
            refs[name] = {"layout": layout, "top1": run_proxy(layout, out / "references" / name, proxy)}
            atomic_write_text(refs_path, json.dumps(refs, indent=1))
    trained = [t for t in trained_trials(study) if t.value is not None]
    layouts = sorted({t.user_attrs["layout"] for t in trained} | {r["layout"] for r in refs.values()})
    print(f"ascan search: measuring {len(layouts)} layouts end to end")
    measured = measure_models(layouts, setting, plan)
    rows, points = [], []
    for t in study.get_trials(deepcopy=False):
        lay = t.user_attrs.get("layout", "")
        rows.append(dict(number=t.number, state=t.state.name, layout=lay, proxy_top1=t.value,
                         predicted_ms=t.user_attrs.get("predicted_ms"), measured_ms=measured.get(lay),
                         worker=t.user_attrs.get("worker"), duplicate_of=t.user_attrs.get("duplicate_of"),
                         kind="trial"))
    for t in trained:  # a pruned trial's value is its top-1 at the epoch it stopped: shown, never ranked
        kind = "trial" if t.state == TrialState.COMPLETE else "pruned"
        points.append(Point(t.user_attrs["layout"], t.value, measured[t.user_attrs["layout"]], kind))
    for name, r in refs.items():
        kind = "published" if not check_asymmetric(r["layout"]) else "symmetric"
        points.append(Point(r["layout"], r["top1"], measured[r["layout"]], kind, name))
        rows.append(dict(number="", state="REFERENCE", layout=r["layout"], proxy_top1=r["top1"],
                         predicted_ms=table.predict_ms(r["layout"]), measured_ms=measured[r["layout"]], kind=name))
    write_trials_csv(out / TRIALS_CSV, rows)
    plot_pareto(out / PARETO_PNG, points, f"ascan search: {len(trained)} trials, proxy {proxy.epochs} ep x "
                f"{proxy.train_subset} img; latency batch {setting.batch} {setting.dtype}")
    finals = [args.reference, *[lay for lay in best_layouts(trained, args.final_top) if lay != args.reference]]
    if args.final_top == 0:
        return
    results = full_train(out, finals, args, proxy)
    final_ms = measure_models(finals, setting, plan)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["layout", "seeds", "top1_mean", "top1_min", "top1_max", "measured_ms"])
    lines = []
    for lay in finals:
        tops = results[lay]
        w.writerow([lay, len(tops), statistics.mean(tops), min(tops), max(tops), final_ms[lay]])
        lines.append(f'{lay}\t# top1 {statistics.mean(tops):.2f} ({len(tops)} seeds), {final_ms[lay]:.1f} ms; '
                     f'timm.create_model("ascan_nano", layout="{lay}")')
    atomic_write_text(out / FINAL_CSV, buf.getvalue())
    write_winners(out / WINNERS_TXT, lines)
    print(buf.getvalue())


def full_train(out: Path, layouts: list[str], args, proxy) -> dict[str, list[float]]:
    """The main job's full training (its config, its epochs) of each layout, ``--final-seeds`` seeds each."""
    from ascan.classify.config import load_config
    from ascan.classify.train import train
    from ascan.search.proxy import base_config

    results: dict[str, list[float]] = {}
    for lay in layouts:
        for seed in range(args.final_seeds):
            folder = out / "final" / f"{lay}-s{seed}"
            sets = [f"model.kwargs.layout={lay}", f"seed={seed}", f"output={folder}"]
            if args.final_epochs:
                sets.append(f"optim.epochs={args.final_epochs}")
            summary = folder / "summary.json"
            if summary.is_file():  # finished before a kill: keep it
                metrics = json.loads(summary.read_text())
                if "test_top1" in metrics:
                    results.setdefault(lay, []).append(float(metrics["test_top1"]))
                    continue
            cfg = load_config(base_config(proxy), sets)
            resume = folder if (folder / "last.pt").is_file() else None
            result = train(cfg, resume=resume, overwrite=resume is None)
            results.setdefault(lay, []).append(float(result.metrics["test_top1"]))
            print(f"ascan search: full training {lay} seed {seed}: test top-1 {result.metrics['test_top1']:.2f} %",
                  file=sys.stderr)
    return results


def validate_phase(out: Path, table, setting, priors, plan, n: int, reference: str) -> None:
    """Prediction error on ``n`` random layouts under the priors that the calibration did not use.

    The held-out layouts are timed in one interleaved run with the calibration layouts, and the scale is
    re-calibrated on that run: a shared 2-core host drifts by 20 % between runs minutes apart (measured), which
    would otherwise be charged to the model. The error with the table's stored scale is printed beside it."""
    from ascan.search.latency import calibration_scale, measure_models, prediction_errors
    from ascan.search.space import sample_layouts

    calibration = calibration_layouts(priors, reference)
    held_out = [lay for lay in sample_layouts(priors, n + len(calibration), seed=12345)
                if lay not in calibration][:n]
    print(f"ascan search: measuring {len(held_out)} held-out layouts end to end, interleaved with "
          f"{len(calibration)} calibration layouts")
    measured_all = measure_models(calibration + held_out, setting, plan)
    measured = {lay: measured_all[lay] for lay in held_out}
    stored_scale = table.scale
    stored_errors = sorted(prediction_errors(table, measured).values())
    table = dataclasses.replace(table, scale=calibration_scale(table, measured_all, calibration))
    errors = prediction_errors(table, measured)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["layout", "predicted_ms", "measured_ms", "error_pct"])
    for lay in held_out:
        w.writerow([lay, f"{table.predict_ms(lay):.3f}", f"{measured[lay]:.3f}", f"{100 * errors[lay]:.2f}"])
    from ascan.atomic import atomic_write_text

    atomic_write_text(out / VALIDATION_CSV, buf.getvalue())
    values = sorted(errors.values())
    print(buf.getvalue())
    print(f"ascan search: latency model error on {len(values)} held-out layouts: median "
          f"{100 * statistics.median(values):.1f} %, worst {100 * values[-1]:.1f} % (scale {table.scale:.3f}, "
          f"calibrated in the same run); with the table's stored scale {stored_scale:.3f}: median "
          f"{100 * statistics.median(stored_errors):.1f} %, worst {100 * stored_errors[-1]:.1f} %")
