"""Command line: parses arguments and calls library functions. Bad input: one line, exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from suite.errors import UserError

DEFAULT_SWEEP = "experiments/toy.yaml"
EXIT_USAGE = 2


def _default_sweep() -> Path:
    """experiments/toy.yaml in the working directory, else in the source checkout of this package."""
    local = Path(DEFAULT_SWEEP)
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[1] / DEFAULT_SWEEP


def _shard(text: str | None) -> tuple[int, int]:
    """--shard i/n, else RANK/WORLD_SIZE from torchrun or accelerate launch, else 0/1."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        rank, world_size = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"--shard {text}: need 0 <= i < n")
    return rank, world_size


def _model_dirs(pairs: list[str]) -> dict[str, Path]:
    dirs = {}
    for pair in pairs:
        name, separator, path = pair.partition("=")
        if not separator or not name or not path:
            raise UserError(f"--model-dir must look like PRESET=PATH, got {pair!r}")
        dirs[name] = Path(path)
    return dirs


def command_sweep(args: argparse.Namespace) -> int:
    from suite.config import load_sweep
    from suite.runner import RunOptions, run_sweep

    resolved = load_sweep(Path(args.config) if args.config else _default_sweep())
    if resolved.sweep.metrics:
        from suite.metrics.evaluate import check_evaluation_available

        check_evaluation_available(resolved.sweep, _evaluate_options(args))
    rank, world_size = _shard(args.shard)
    out = Path(args.out) if args.out else Path("results") / resolved.sweep.name
    options = RunOptions(
        out, args.device, args.dtype, rank, world_size, _model_dirs(args.model_dir), progress=not args.quiet
    )
    summary = run_sweep(resolved, options)
    state = "complete" if summary.complete else "waiting for other shards"
    print(
        f"{summary.run}: {summary.images_generated} images generated in {summary.items_generated} items "
        f"(shard {rank}/{world_size}: {summary.items_this_shard} of {summary.items_total} items); run {state}"
    )
    if summary.complete and resolved.sweep.metrics:
        _evaluate(summary.run, args)
    if summary.complete:
        from suite.report import build_report

        print(f"report: {build_report(summary.run) / 'index.html'}")
    return 0


def _evaluate_options(args: argparse.Namespace):
    from suite.metrics.evaluate import EvaluateOptions

    weights = Path(args.inception_weights) if args.inception_weights else None
    return EvaluateOptions(args.device, weights, getattr(args, "recompute", False), progress=not args.quiet)


def _evaluate(run: Path, args: argparse.Namespace) -> None:
    from suite.metrics.evaluate import evaluate_run

    table = evaluate_run(run, _evaluate_options(args))
    print(f"{run}: metrics for {len(table)} grid points in {run / 'metrics.csv'}")


def command_report(args: argparse.Namespace) -> int:
    from suite.report import build_report

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a run folder (no config.yaml)")
    folder = build_report(run, Path(args.out) if args.out else None)
    print(f"report: {folder / 'report.md'}, {folder / 'index.html'}")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    _evaluate(Path(args.run), args)
    return 0


def command_profile(args: argparse.Namespace) -> int:
    from suite.presets import PRESETS
    from suite.profile import ProfileSettings, profile_presets, write_profile
    from suite.samplers import SAMPLERS

    names = args.presets or [name for name, preset in PRESETS.items() if preset.reference_configs or preset.build]
    for name in names:
        PRESETS.get(name)
    SAMPLERS.get(args.sampler)
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    settings = ProfileSettings(args.sampler, args.steps, args.guidance)
    profile = profile_presets(names, settings, _model_dirs(args.model_dir))
    print(write_profile(profile, settings, Path(args.out)))
    print(f"tables: {args.out}/{{pipelines,stages,components}}.{{csv,parquet}}, {args.out}/profile.md")
    return 0


def command_train(args: argparse.Namespace) -> int:
    from suite.presets import cache_root
    from suite.toy import WEIGHTS
    from suite.toy.train import train_toy

    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    work = Path(args.work) if args.work else cache_root() / "train" / "toy"
    out = Path(args.out) if args.out else WEIGHTS
    train_toy(work, out, args.jobs)
    print(f"toy models written to {out} (training state in {work})")
    return 0


def command_list(args: argparse.Namespace) -> int:
    from suite.backends import BACKENDS
    from suite.metrics import METRICS
    from suite.presets import PRESETS
    from suite.prompts import PROMPT_SETS
    from suite.samplers import SAMPLERS

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
        print(f"  {name:22} {len(prompts)} prompts")
    from suite.metrics.networks import CLIP_MODELS, FEATURE_NETWORKS

    print("metrics:")
    for name, description in METRICS.items():
        print(f"  {name:22} {description}")
    print("feature networks (FID / KID / CMMD):")
    for name, factory in FEATURE_NETWORKS.items():
        print(f"  {name:22} {(factory.__doc__ or '').strip().splitlines()[0] if factory.__doc__ else ''}")
    print("CLIP models (CLIP score): " + ", ".join(CLIP_MODELS.names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="suite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="run a sweep (default: experiments/toy.yaml); resumable")
    sweep.add_argument("config", nargs="?", help="sweep YAML file")
    sweep.add_argument("--out", help="run folder (default: results/<sweep name>)")
    sweep.add_argument("--shard", help="i/n: run every n-th work item starting at i (default: RANK/WORLD_SIZE or 0/1)")
    sweep.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    sweep.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="auto: each preset's dtypes on accelerators, fp32 on CPU",
    )
    sweep.add_argument(
        "--model-dir",
        action="append",
        default=[],
        metavar="PRESET=PATH",
        help="load PRESET from a local folder instead of the hub (repeatable)",
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument("--inception-weights", metavar="PATH", help="InceptionV3 FID weights (torch-fidelity's .pth)")
    sweep.set_defaults(handler=command_sweep)

    evaluate = commands.add_parser("evaluate", help="(re)compute a finished run's metrics from its folder alone")
    evaluate.add_argument("run", help="run folder")
    evaluate.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    evaluate.add_argument("--inception-weights", metavar="PATH", help="InceptionV3 FID weights (torch-fidelity's .pth)")
    evaluate.add_argument("--recompute", action="store_true", help="ignore grid points already evaluated")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=command_evaluate)

    report = commands.add_parser("report", help="tables, plots, image grids and HTML from a run folder alone")
    report.add_argument("run", help="run folder")
    report.add_argument("--out", help="report folder (default: RUN/report)")
    report.set_defaults(handler=command_report)

    profile = commands.add_parser("profile", help="parameters, memory, values and FLOPs per step from configs alone")
    profile.add_argument("presets", nargs="*", help="presets to profile (default: every preset with known configs)")
    profile.add_argument("--sampler", default="ddim", help="sampler for FLOPs per image (default: ddim)")
    profile.add_argument("--steps", type=int, default=50, help="denoising steps per stage (default: 50)")
    profile.add_argument("--guidance", type=float, default=7.5, help="first-stage guidance scale (default: 7.5)")
    profile.add_argument("--out", default="results/profile", help="folder for the tables (default: results/profile)")
    profile.add_argument(
        "--model-dir",
        action="append",
        default=[],
        metavar="PRESET=PATH",
        help="read PRESET's configs from a local folder (repeatable)",
    )
    profile.set_defaults(handler=command_profile)

    train = commands.add_parser("train", help="rebuild the toy world's models (resumable)")
    train.add_argument("world", choices=["toy"], help="what to train: the toy world's models")
    train.add_argument("--work", help="checkpoints and finished models (default: $SUITE_CACHE/train/toy)")
    train.add_argument("--out", help="where the assembled models go (default: the package's suite/toy/weights)")
    train.add_argument("--jobs", type=int, default=2, help="parallel training tracks (default 2: one per core pair)")
    train.set_defaults(handler=command_train)

    listing = commands.add_parser("list", help="backends, presets, samplers, prompt sets, metrics")
    listing.set_defaults(handler=command_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.handler(args)
    except UserError as error:
        print(f"suite: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("suite: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Library progress bars and advice would drown the suite's own one-line messages."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    import diffusers
    import huggingface_hub
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
