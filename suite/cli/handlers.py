"""The command handlers: each reads its parsed arguments, calls library functions and prints what it made."""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

from suite.analysis.ablation import run_ablation
from suite.analysis.ablation.design import candidate as ablation_candidate
from suite.analysis.ablation.design import load_ablation
from suite.analysis.ablation.report import build_ablation_report
from suite.analysis.bench import ATTENTION, BenchSettings, bench_presets, console_lines, write_bench
from suite.analysis.claims import ClaimsOptions, register_claims, run_claims
from suite.analysis.claims.claim_file import load_claims
from suite.analysis.claims.experiments import EXPERIMENTS
from suite.analysis.claims.plan import plan_claims
from suite.analysis.claims.report import build_claims_report
from suite.analysis.compare import compare_run
from suite.analysis.costs import ProfileSettings, profile_presets, write_profile
from suite.analysis.diff import diff_runs
from suite.analysis.registration import register_all, registry_path
from suite.analysis.report import build_report
from suite.analysis.tracking import check_trackers, log_run, recorded_trackers, remember_trackers
from suite.core.errors import UserError
from suite.core.files import atomic_write_table, ensure_writable
from suite.core.formatting import markdown_table
from suite.core.stats import ALPHA
from suite.metrics import METRICS
from suite.metrics.networks import CLIP_MODELS, FEATURE_NETWORKS
from suite.model.backends import BACKENDS
from suite.model.backends.components import STAGE_KINDS
from suite.model.devices import DTYPES, resolve_device
from suite.model.presets import PRESETS, TOY_WEIGHTS, materialise
from suite.model.samplers import SAMPLERS
from suite.model.sources import cache_root
from suite.prompts.sets import FILTERS, PROMPT_SETS
from suite.run.config import load_sweep
from suite.run.evaluate import evaluate_run, evaluate_share
from suite.run.folder import phase_lines, record_phases
from suite.run.integrity import damaged_points, damaged_tables
from suite.run.leases import describe
from suite.run.options import EvaluateOptions, RunOptions
from suite.run.preflight import check_evaluation, check_point_steps
from suite.run.resume import check_run, elect_evaluator, evaluation_finished
from suite.run.runner import run_sweep
from suite.run.topology import device_for, topology
from suite.toy.recipes import ABLATION_SEEDS, ablation_tracks
from suite.toy.train import train_ablation, train_toy, train_unclip

DEFAULT_SWEEP = "experiments/toy.yaml"


def default_sweep() -> Path:
    """experiments/toy.yaml in the working directory, else in the source checkout of this package."""
    local = Path(DEFAULT_SWEEP)
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[2] / DEFAULT_SWEEP


def _model_dirs(pairs: list[str]) -> dict[str, Path]:
    dirs = {}
    for pair in pairs:
        name, separator, path = pair.partition("=")
        if not separator or not name or not path:
            raise UserError(f"--model-dir must look like PRESET=PATH, got {pair!r}")
        dirs[name] = Path(path)
    return dirs


def command_sweep(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    resolved = load_sweep(Path(args.config) if args.config else default_sweep())
    place = topology(args.shard)
    if resolved.sweep.metrics:
        check_evaluation(resolved.sweep, _evaluate_options(args))
    out = Path(args.out) if args.out else Path("results") / resolved.sweep.name
    ensure_writable(out)  # before anything reads the folder: a name too long is one line, not a traceback
    trackers = check_trackers((*resolved.sweep.tracking, *args.report_to), out)  # a missing library: before any image
    if (out / "config.yaml").is_file():
        remember_trackers(out, trackers)  # a resumed run: logged there even if this process is stopped
    options = RunOptions(
        out,
        device_for(args.device, place),
        args.dtype,
        place.rank,
        place.world_size,
        _model_dirs(args.model_dir),
        progress=not args.quiet,
        compile=args.compile,
        channels_last=args.channels_last,
    )
    before = time.perf_counter() - started  # reading the sweep and checking the evaluation's inputs
    summary = run_sweep(resolved, options)
    remember_trackers(summary.run, trackers)
    phases = {"load": before + summary.phases["load"], "generate": summary.phases["generate"]}
    for item_id, problem in summary.repaired.items():
        print(f"suite: regenerated item {item_id}: {problem}", file=sys.stderr)
    state = "complete" if summary.complete else "waiting for other shards or processes"
    print(
        f"{summary.run}: {summary.images_generated} images generated in {summary.items_generated} items "
        f"({place.describe()} on {options.device}: {summary.items_this_shard} of {summary.items_total} items); "
        f"run {state}"
    )
    if summary.items_held_elsewhere:
        print(f"{summary.run}: {summary.items_held_elsewhere} items are being generated by another process")
    if summary.complete:
        phases |= _finish(summary.run, args, metrics=bool(resolved.sweep.metrics), trackers=trackers)
    print(f"{summary.run}: where the time went (wall seconds, this process)")
    print("\n".join(phase_lines(phases)))
    record_phases(summary.run, phases)
    return 0


def _finish(run: Path, args: argparse.Namespace, metrics: bool, trackers: tuple[str, ...] = ()) -> dict[str, float]:
    """Evaluate, compare and report a complete run, then log it to its trackers, in exactly one of the processes
    that see it complete; return the wall seconds of each of those phases this process ran."""

    phases = {}
    state, owner = elect_evaluator(run)
    if state == "elsewhere":
        print(f"{run}: {describe(owner)} evaluates and reports this run; this process stops here")
        return phases
    if state == "done":
        print(f"{run}: already evaluated and reported (by {describe(owner)}): {run / 'report' / 'index.html'}")
        return _track(run, trackers)  # a tracker added since, or what was not yet sent: the ledger knows
    completed = False
    try:
        if metrics:
            clock = time.perf_counter()
            _evaluate(run, args)
            phases["evaluate"] = time.perf_counter() - clock
            clock = time.perf_counter()
            _compare(run, args)
            phases["compare"] = time.perf_counter() - clock
        clock = time.perf_counter()
        print(f"report: {build_report(run) / 'index.html'}")
        phases["report"] = time.perf_counter() - clock
        completed = True
    finally:
        evaluation_finished(run, completed)
    return phases | _track(run, trackers)  # after the run is marked done: a tracker's failure does not undo it


def _track(run: Path, trackers: tuple[str, ...]) -> dict[str, float]:
    """Log the run to its trackers (those named now and those it already logs to); the wall seconds it took."""
    if not trackers and not recorded_trackers(run):
        return {}
    clock = time.perf_counter()
    log_run(run, trackers)
    return {"track": time.perf_counter() - clock}


def _repair_evaluation(run: Path) -> None:
    """Compute again the evaluation's damaged or missing tables and grid points (from the cached points, with the
    feature networks only where a point itself is damaged) before a report reads them."""
    damaged = damaged_tables(run) + [f"evaluation/{point}" for point in damaged_points(run)]
    if not damaged:
        return
    state, owner = elect_evaluator(run, again=True)
    if state == "elsewhere":
        raise UserError(f"{describe(owner)} is evaluating {run}; wait for it, then run `suite report {run}` again")
    print(f"suite: {', '.join(damaged)} missing or damaged; computing the evaluation again", file=sys.stderr)
    args = argparse.Namespace(device="auto", inception_weights=None, quiet=True)
    try:
        _evaluate(run, args)
        _compare(run, args)
    finally:
        evaluation_finished(run, completed=False)  # the report is still to come


def _evaluate_options(args: argparse.Namespace):
    weights = Path(args.inception_weights) if args.inception_weights else None
    return EvaluateOptions(args.device, weights, getattr(args, "recompute", False), progress=not args.quiet)


def _evaluate(run: Path, args: argparse.Namespace) -> dict[str, float]:
    """Evaluate the run; print and return where the evaluation's time went, per metric part."""
    table = evaluate_run(run, _evaluate_options(args))
    here = table.attrs.get("computed_here", 0)
    print(f"{run}: metrics for {len(table)} grid points in {run / 'metrics.csv'} ({here} computed by this process)")
    seconds = table.attrs.get("seconds", {})
    if seconds:
        print(f"{run}: evaluation time per metric part (wall seconds, this process)")
        print("\n".join(phase_lines(seconds)))
    return seconds


def _compare(run: Path, args: argparse.Namespace) -> None:
    table = compare_run(run, _evaluate_options(args))
    significant = int((table["p_holm"] < ALPHA).sum()) if len(table) else 0
    print(f"{run}: {len(table)} paired comparisons ({significant} significant after Holm) in {run / 'comparisons.csv'}")


def command_compare(args: argparse.Namespace) -> int:
    run = Path(args.run)
    trackers = check_trackers(args.report_to, run)
    _evaluate(run, args)  # resumes: finished grid points are read back
    _compare(run, args)
    _track(run, trackers)
    return 0


def command_report(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a run folder (no config.yaml)")
    out = Path(args.out) if args.out else None
    ensure_writable(out or run / "report")
    trackers = check_trackers((), run)  # the trackers the run logs to get the new report
    _repair_evaluation(run)
    folder = build_report(run, out)
    print(f"report: {folder / 'report.md'}, {folder / 'index.html'}")
    if out is None:
        _track(run, trackers)
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    run = Path(args.run)
    trackers = check_trackers(args.report_to, run)
    if (run / "samples.parquet").is_file() and (run / "config.yaml").is_file():
        state, owner = elect_evaluator(run, again=True)
        if state == "elsewhere":  # e.g. the other ranks of `torchrun ... suite evaluate`: share the grid points
            computed = evaluate_share(run, _evaluate_options(args))
            print(f"{run}: {computed} grid points computed by this process; {describe(owner)} writes the tables")
            return 0
        try:
            seconds = _evaluate(run, args)
            seconds |= _track(run, trackers)  # under the evaluator's lease: one process logs
        finally:
            evaluation_finished(run, completed=False)  # compare and report are still to come
        if seconds:
            record_phases(run, seconds)
        return 0
    _evaluate(run, args)
    return 0


def command_check(args: argparse.Namespace) -> int:
    run = Path(args.run)
    verified, problems = check_run(run)
    for problem in problems:
        print(f"{run}: {problem}")
    if problems:
        print(
            f"{run}: {len(problems)} problems; `suite sweep` with the run's sweep regenerates what is missing or damaged"
        )
        return 1
    print(f"{run}: ok ({verified} images match their recorded sha256)")
    return 0


def command_profile(args: argparse.Namespace) -> int:
    names = args.presets or [name for name, preset in PRESETS.items() if preset.reference_configs or preset.build]
    for name in names:
        PRESETS.get(name)
    SAMPLERS.get(args.sampler)
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise UserError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    model_dirs = _model_dirs(args.model_dir)
    for name in names:
        preset = PRESETS.get(name)
        if name in model_dirs:
            preset = replace(preset, local_dir=Path(model_dirs[name]))
        check_point_steps(materialise(preset).without_weights(), args.sampler, args.steps, args.guidance)
    settings = ProfileSettings(args.sampler, args.steps, args.guidance)
    profile = profile_presets(names, settings, model_dirs)
    print(write_profile(profile, settings, Path(args.out)))
    print(f"tables: {args.out}/{{pipelines,stages,components}}.{{csv,parquet}}, {args.out}/profile.md")
    return 0


def command_bench(args: argparse.Namespace) -> int:
    names = args.presets or ["sd15", "sd21-base", "if-xl"]
    for name in names:
        materialise(PRESETS.get(name)).without_weights()
    if args.sampler is not None:
        SAMPLERS.get(args.sampler)
    for option, value, least in (
        ("--steps", args.steps, 1),
        ("--batch-size", args.batch_size, 1),
        ("--repeats", args.repeats, 1),
    ):
        if value < least:
            raise UserError(f"{option} must be at least {least}, got {value}")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise UserError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.attention not in ATTENTION:
        raise UserError(f"--attention must be one of {', '.join(ATTENTION)}, got {args.attention!r}")
    for name in names:
        preset = materialise(PRESETS.get(name)).without_weights()
        check_point_steps(preset, args.sampler or preset.bench_sampler, args.steps, args.guidance)
    resolve_device(args.device)
    settings = BenchSettings(
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        sampler=args.sampler,
        compile=args.compile,
        channels_last=args.channels_last,
        attention=args.attention,
        repeats=args.repeats,
        baseline=not args.no_baseline,
    )
    table = bench_presets(names, settings)
    folder = write_bench(table, Path(args.out), settings)
    print("\n".join(console_lines(table)))
    print(f"tables: {folder}/bench.{{csv,parquet,md}}")
    return 0


def command_diff(args: argparse.Namespace) -> int:
    first, second = Path(args.a), Path(args.b)
    for run in (first, second):
        if not (run / "config.yaml").is_file():
            raise UserError(f"{run} is not a run folder (no config.yaml)")
    if args.out:
        ensure_writable(Path(args.out).parent)
    table = diff_runs(first, second)
    shown = [*table.columns[:4], "images", "sha256_match", "max_pixel_difference", "mean_pixel_difference"]
    main_scores = [metric.main_image_score() for metric in METRICS.values() if metric.main_image_score()]
    shown += [f"{score}_difference" for score in main_scores if f"{score}_difference" in table]
    print(markdown_table(table[shown], {"sha256_match": ".3f", "mean_pixel_difference": ".3f"}))
    if args.out:
        atomic_write_table(table, Path(args.out))
        print(f"tables: {args.out}.{{csv,parquet}}")
    return 0


def command_train(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    work = Path(args.work) if args.work else cache_root() / "train" / "toy"
    if not 1 <= args.seeds <= len(ABLATION_SEEDS):
        raise UserError(
            f"--seeds must be 1 to {len(ABLATION_SEEDS)} (training seeds {ABLATION_SEEDS}), got {args.seeds}"
        )
    if (args.runs or args.from_scratch) and not args.ablation:
        raise UserError("--runs and --from-scratch go with --ablation")
    if args.unclip and args.ablation:
        raise UserError("--unclip and --ablation train different models: give one of them")
    runs = tuple(args.runs or ())
    known = [name for track in ablation_tracks(args.seeds) for name in track]
    unknown = [name for name in runs if name not in known]
    if unknown:
        raise UserError(f"--runs {', '.join(unknown)}: not a run of the first {args.seeds} seeds ({', '.join(known)})")
    out = Path(args.out) if args.out else TOY_WEIGHTS / "ablation" if args.ablation else TOY_WEIGHTS
    ensure_writable(work)
    ensure_writable(out)
    if args.ablation:
        train_ablation(work, out, args.jobs, args.seeds, reuse=not args.from_scratch, runs=runs)
    elif args.unclip:
        train_unclip(work, out, args.jobs)
    else:
        train_toy(work, out, args.jobs)
    print(f"toy models written to {out} (training state in {work})")
    return 0


def command_claims(args: argparse.Namespace) -> int:
    options = ClaimsOptions(
        Path(args.claims_dir), Path(args.out), args.device, tuple(args.only), not args.quiet, args.compile
    )
    configs = load_claims(options.claims_dir, list(options.names) or None)  # every claim file checked first
    if args.reason and not args.register:
        raise UserError("--reason goes with --register")
    if args.register:
        register_claims(options, args.reason)
        return 0
    if args.plan:
        table = plan_claims(Path(args.pilot), configs)
        print(markdown_table(table, {column: ".3g" for column in table.columns if table[column].dtype.kind == "f"}))
        print(
            "prompts_to_resolve: per measure, the smaller of the two plans, one seed per prompt, 80% power; "
            "comparison_prompts: both measures equivalent or either different; "
            f"the toy grammar has {len(PROMPT_SETS.get('toy-all'))} distinct prompts"
        )
        return 0
    if args.report_only:
        if not (options.out / "report" / "data").is_dir():
            raise UserError(f"no measured claims in {options.out / 'report' / 'data'}: run `suite claims` first")
        folder = build_claims_report(options.out / "report", registry_path(options.claims_dir.parent))
    else:
        folder = run_claims(options)
    print(f"claims report: {folder / 'report.md'} and {folder / 'index.html'}")
    return 0


def command_ablation(args: argparse.Namespace) -> int:
    path, out = Path(args.file), Path(args.out)
    config = load_ablation(path)  # the file is checked before anything runs
    if args.reason and not args.register:
        raise UserError("--reason goes with --register")
    if args.register:
        data_exist = (out / "report" / "data" / "ablation.yaml").is_file()
        added = register_all(registry_path(path.parent), [ablation_candidate(config, data_exist)], args.reason)
        print(
            f"{config.name}: "
            + (f"registered {added[0].hash} at {added[0].registered}" if added else "registered already")
        )
        return 0
    if args.report_only:
        if not (out / "report" / "data" / "ablation.yaml").is_file():
            raise UserError(f"no measured ablation in {out / 'report' / 'data'}: run `suite ablation` first")
        folder = build_ablation_report(out / "report", registry_path(path.parent))
    else:
        folder = run_ablation(path, out, args.device, not args.quiet)
    print(f"ablation report: {folder / 'report.md'} and {folder / 'index.html'}")
    return 0


def command_list(args: argparse.Namespace) -> int:
    print("backends:")
    for name, backend in BACKENDS.items():
        print(f"  {name:22} {backend.description}")
    print("presets:")
    for name, preset in PRESETS.items():
        stages = " -> ".join(f"{spec.name}({spec.kind})" for spec in preset.stages)
        print(f"  {name:22} [{preset.backend}] {preset.description}\n  {'':22} stages: {stages}")
    print("samplers:")
    for name, sampler in SAMPLERS.items():
        print(f"  {name:22} {sampler.scheduler_class} {dict(sampler.overrides) or ''} {sampler.description}")
    print("prompt sets:")
    for name, prompts in PROMPT_SETS.items():
        filters = f"; filter by {', '.join(FILTERS[name])}" if name in FILTERS else ""
        print(f"  {name:22} {len(prompts)} prompts{filters}")

    print("claim experiments (experiments/claims/, suite claims):")
    for name, experiment in EXPERIMENTS.items():
        print(f"  {name:22} {experiment.description}")
    print("metrics:")
    for name, metric in METRICS.items():
        print(f"  {name:22} {metric.description}")
    print("feature networks (FID / KID / CMMD):")
    for name, factory in FEATURE_NETWORKS.items():
        print(f"  {name:22} {(factory.__doc__ or '').strip().splitlines()[0] if factory.__doc__ else ''}")
    print("CLIP models (CLIP score): " + ", ".join(CLIP_MODELS.names()))
    print("dtypes (--dtype): " + ", ".join(DTYPES.names()))
    print("stage kinds (a preset's stages): " + ", ".join(STAGE_KINDS.names()))
    return 0
