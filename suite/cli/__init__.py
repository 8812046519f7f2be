"""Command line: parses arguments and calls library functions. Bad input: one line, exit code 2.

The top layer: may import every sub-package; nothing imports it but ``suite.__main__`` and ``suite.api``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import diffusers
import huggingface_hub
import transformers

from suite.cli import handlers
from suite.core.errors import UserError
from suite.model.devices import DTYPES
from suite.run.config import TRACKERS

EXIT_USAGE = 2


def _evaluation_command(commands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand that reads a run folder and may evaluate it: RUN, --device, --inception-weights, --quiet."""
    command = commands.add_parser(name, help=help_text)
    command.add_argument("run", help="run folder")
    command.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    command.add_argument("--inception-weights", metavar="PATH", help="InceptionV3 FID weights (torch-fidelity's .pth)")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    _report_to(command)
    return command


def _report_to(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--report-to",
        action="append",
        default=[],
        choices=TRACKERS,
        help="also log to this experiment tracker (repeatable; local and offline, under RUN/tracking/; "
        "needs pip install 'diffusion-suite[tracking]', or [wandb])",
    )


def _device_and_dtype(command: argparse.ArgumentParser) -> None:
    """--device and --dtype, as generation (sweep) and timing (bench) take them."""

    command.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    command.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES.names()],
        help="auto: each preset's dtypes on accelerators, fp32 on CPU",
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), like every other bad input."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="suite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="run a sweep (default: experiments/toy.yaml); resumable")
    sweep.add_argument("config", nargs="?", help="sweep YAML file")
    sweep.add_argument("--out", help="run folder (default: results/<sweep name>)")
    sweep.add_argument("--shard", help="i/n: run every n-th work item starting at i (default: RANK/WORLD_SIZE or 0/1)")
    _device_and_dtype(sweep)
    sweep.add_argument(
        "--model-dir",
        action="append",
        default=[],
        metavar="PRESET=PATH",
        help="load PRESET from a local folder instead of the hub (repeatable)",
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument(
        "--compile", action="store_true", help="torch.compile each UNet (compile time recorded apart, in compile_s)"
    )
    sweep.add_argument("--channels-last", action="store_true", help="channels-last memory format for UNets and VAEs")
    sweep.add_argument("--inception-weights", metavar="PATH", help="InceptionV3 FID weights (torch-fidelity's .pth)")
    _report_to(sweep)
    sweep.set_defaults(handler=handlers.command_sweep)

    evaluate = _evaluation_command(commands, "evaluate", "(re)compute a finished run's metrics from its folder alone")
    evaluate.add_argument("--recompute", action="store_true", help="ignore grid points already evaluated")
    evaluate.set_defaults(handler=handlers.command_evaluate)
    compare = _evaluation_command(commands, "compare", "paired tests between grid points (evaluates first if needed)")
    compare.set_defaults(handler=handlers.command_compare)

    check = commands.add_parser("check", help="verify a run folder's items, images and tables against their hashes")
    check.add_argument("run", help="run folder")
    check.set_defaults(handler=handlers.command_check)

    report = commands.add_parser("report", help="tables, plots, image grids and HTML from a run folder alone")
    report.add_argument("run", help="run folder")
    report.add_argument("--out", help="report folder (default: RUN/report)")
    report.set_defaults(handler=handlers.command_report)

    profile = commands.add_parser("profile", help="parameters, memory, values and FLOPs per step from configs alone")
    profile.add_argument("presets", nargs="*", help="presets to profile (default: every preset with known configs)")
    profile.add_argument("--sampler", default="ddim", help="sampler for FLOPs per image (default: ddim)")
    profile.add_argument("--steps", type=int, default=50, help="denoising steps per stage (default: 50)")
    profile.add_argument(
        "--guidance", type=float, default=7.5, help="guidance scale of stages whose preset fixes none (default: 7.5)"
    )
    profile.add_argument("--out", default="results/profile", help="folder for the tables (default: results/profile)")
    profile.add_argument(
        "--model-dir",
        action="append",
        default=[],
        metavar="PRESET=PATH",
        help="read PRESET's configs from a local folder (repeatable)",
    )
    profile.set_defaults(handler=handlers.command_profile)

    bench = commands.add_parser(
        "bench", help="time real architectures with random weights, against diffusers' pipelines"
    )
    bench.add_argument("presets", nargs="*", help="presets to time (default: sd15 sd21-base if-xl)")
    _device_and_dtype(bench)
    bench.add_argument("--batch-size", type=int, default=1, help="images per batch (default: 1)")
    bench.add_argument("--steps", type=int, default=20, help="timed denoising steps per stage (default: 20)")
    bench.add_argument(
        "--guidance", type=float, default=7.5, help="guidance scale of stages whose preset fixes none (default: 7.5)"
    )
    bench.add_argument(
        "--sampler", default=None, help="sampler (default: each preset's own: ddim; unclip for unCLIP presets)"
    )
    bench.add_argument("--compile", action="store_true", help="torch.compile each UNet (compile time reported apart)")
    bench.add_argument("--channels-last", action="store_true", help="channels-last memory format for UNets and VAEs")
    bench.add_argument("--attention", default="sdpa", help="sdpa (fused kernels, default) or math (reference kernel)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per stage, alternating with diffusers")
    bench.add_argument("--no-baseline", action="store_true", help="skip diffusers' pipelines")
    bench.add_argument("--out", default="results/bench", help="tables go to OUT/<device>/ (default: results/bench)")
    bench.set_defaults(handler=handlers.command_bench)

    diff = commands.add_parser("diff", help="two runs of one sweep (other device or dtype): same images? same scores?")
    diff.add_argument("a", help="run folder A (e.g. the CPU run)")
    diff.add_argument("b", help="run folder B (e.g. the CUDA run)")
    diff.add_argument("--out", help="write the full table to OUT.csv and OUT.parquet")
    diff.set_defaults(handler=handlers.command_diff)

    train = commands.add_parser("train", help="rebuild the toy world's models (resumable)")
    train.add_argument("world", choices=["toy"], help="what to train: the toy world's models")
    train.add_argument("--work", help="checkpoints and finished models (default: $SUITE_CACHE/train/toy)")
    train.add_argument("--out", help="where the assembled models go (default: the package's suite/toy/weights)")
    train.add_argument("--jobs", type=int, default=2, help="parallel training tracks (default 2: one per core pair)")
    train.add_argument(
        "--ablation",
        action="store_true",
        help="train the 2x2 ablation {latent, pixel} x {CLIP-style, T5-style} at one matched budget "
        "(default --out: the package's suite/toy/weights/ablation)",
    )
    train.add_argument(
        "--unclip",
        action="store_true",
        help="train only toy-unclip's prior and decoder into --out/toy-unclip, on the toy CLIP --work trained if it "
        "has one, else the shipped one (training.json names which)",
    )
    train.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="with --ablation: training runs per cell, the first N of training seeds 6, 7, 8 (default 3)",
    )
    train.add_argument(
        "--from-scratch",
        action="store_true",
        help="with --ablation: train every run again (default: runs already in --out are reused, only missing ones train)",
    )
    train.add_argument(
        "--runs",
        action="append",
        metavar="RUN",
        help="with --ablation: train only this run now (repeatable, e.g. latent-clip-seed8); the others already "
        "finished are assembled, so training can be split across sessions or machines",
    )
    train.set_defaults(handler=handlers.command_train)

    claims = commands.add_parser(
        "claims", help="the background article's claims as experiments with verdicts (experiments/claims/)"
    )
    claims.add_argument("--only", nargs="+", default=[], metavar="CLAIM", help="claim files by name, e.g. 03-steps")
    claims.add_argument("--claims-dir", default="experiments/claims")
    claims.add_argument("--out", default="results/claims", help="runs/ (large, not committed) and report/ go here")
    claims.add_argument("--device", default="auto")
    claims.add_argument("--report-only", action="store_true", help="rebuild the report from report/data alone")
    claims.add_argument(
        "--register",
        action="store_true",
        help="record each claim file's rules in experiments/registry.yaml (before measuring; a change needs --reason)",
    )
    claims.add_argument(
        "--reason", default="", help="with --register: why the rules changed (printed beside the verdict)"
    )
    claims.add_argument(
        "--plan",
        action="store_true",
        help="print how many prompts each comparison needs for 80%% power at its margin, from the pilot",
    )
    claims.add_argument("--pilot", default="results/claims/pilot", help="with --plan: the pilot's tables")
    claims.add_argument("--quiet", action="store_true")
    claims.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each UNet of the claims' sweeps: the same images, faster in long sweeps (claim 3)",
    )
    claims.set_defaults(handler=handlers.command_claims)

    ablation = commands.add_parser(
        "ablation",
        help="a 2x2 ablation at one training budget: main effects and interaction (experiments/ablation.yaml)",
    )
    ablation.add_argument("file", nargs="?", default="experiments/ablation.yaml", help="the ablation file")
    ablation.add_argument("--out", default="results/ablation", help="run/ (large, not committed) and report/ go here")
    ablation.add_argument("--device", default="auto")
    ablation.add_argument("--report-only", action="store_true", help="rebuild the report from report/data alone")
    ablation.add_argument(
        "--register",
        action="store_true",
        help="record the file's rules, families and grid points in experiments/registry.yaml (a change needs --reason)",
    )
    ablation.add_argument("--reason", default="", help="with --register: why the rules changed")
    ablation.add_argument("--quiet", action="store_true")
    ablation.set_defaults(handler=handlers.command_ablation)

    listing = commands.add_parser("list", help="backends, presets, samplers, prompt sets, metrics")
    listing.set_defaults(handler=handlers.command_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.handler(args)
    except UserError as error:
        print(f"suite: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # the file system refused (full, read-only, file too large, name too long)
        print(f"suite: error: {describe_os_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("suite: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def describe_os_error(error: OSError) -> str:
    """One line for a refused read or write: what, where, and that finished work is kept (writes are atomic)."""
    where = f": {error.filename}" if error.filename else ""
    return (
        f"{error.strerror or error}{where}; finished work is kept (every file is written whole or not at all): "
        "fix this and re-run the same command to resume"
    )


def _quiet_libraries() -> None:
    """Library progress bars and advice would drown the suite's own one-line messages."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.set_verbosity_error()  # the libraries are imported already: the variables above
    diffusers.utils.logging.set_verbosity_error()  # reach only child processes
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
