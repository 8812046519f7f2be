"""The suite from Python, for notebooks: the calls behind ``suite sweep``, ``evaluate``, ``compare`` and ``report``,
returning tidy pandas tables instead of printing paths.

Each call runs exactly what its command runs (the same handler, the same checks, the same resumable run folder), so
a notebook and the command line can share a run. Bad input raises ``suite.core.errors.UserError`` with the line the
command would print. The top layer beside ``suite.cli``: it may import every sub-package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from suite.analysis.compare import COMPARISONS
from suite.cli import build_parser
from suite.cli.handlers import default_sweep
from suite.core.errors import UserError
from suite.run.config import load_sweep
from suite.run.folder import read_run as read_run_folder


@dataclass(frozen=True)
class RunTables:
    """A run folder's tables: one row per grid point (``metrics``), per paired comparison (``comparisons``), per image
    (``images``: the samples joined with their per-image scores) and per preset and stage (``costs``); None where the
    run has not written one yet."""

    path: Path
    metrics: pd.DataFrame | None
    comparisons: pd.DataFrame | None
    images: pd.DataFrame
    costs: pd.DataFrame | None
    config: Mapping[str, Any]


def read_run(run: str | Path) -> RunTables:
    """The tables of a run folder, as the report reads them.

    >>> tables = suite.read_run("results/toy")
    >>> tables.metrics[["preset", "guidance_scale", "fid", "fid_ci95_low", "fid_ci95_high"]]
    """
    folder = read_run_folder(Path(run))
    comparisons_path = folder.path / f"{COMPARISONS}.parquet"
    comparisons = None
    if comparisons_path.is_file() and comparisons_path.name not in folder.damaged:
        comparisons = pd.read_parquet(comparisons_path)
    return RunTables(folder.path, folder.metrics, comparisons, folder.images(), folder.costs, dict(folder.config))


def run_sweep(
    sweep: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    quiet: bool = True,
    report_to: Sequence[str] = (),
) -> RunTables:
    """Run a sweep file (default: the default toy sweep) into ``out`` (default ``results/<its name>``), then
    evaluate, compare and report it, as ``suite sweep``; resumes a run that was stopped. Returns its tables.

    ``report_to`` names experiment trackers to log to, as ``--report-to`` does.

    >>> tables = suite.run_sweep("experiments/toy-quick.yaml", out="results/toy-quick", report_to=["tensorboard"])
    >>> tables.metrics[["preset", "toy_correct", "toy_correct_ci95_low", "toy_correct_ci95_high"]]
    """
    argv = ["sweep", *([str(sweep)] if sweep is not None else []), "--device", device]
    if out is None:
        out = Path("results") / load_sweep(Path(sweep) if sweep is not None else default_sweep()).sweep.name
    _command([*argv, "--out", str(out), *(["--quiet"] if quiet else []), *_report_to(report_to)])
    return read_run(out)


def evaluate_run(
    run: str | Path, device: str = "auto", recompute: bool = False, report_to: Sequence[str] = ()
) -> pd.DataFrame:
    """Evaluate a run's grid points (finished ones are read back unless ``recompute``), as ``suite evaluate``; returns
    the metrics table, one row per grid point with every number's 95% interval.

    >>> metrics = suite.evaluate_run("results/toy")
    """
    recompute_flag = ["--recompute"] if recompute else []
    _command(["evaluate", str(run), "--device", device, "--quiet", *recompute_flag, *_report_to(report_to)])
    return read_run(run).metrics


def compare_run(run: str | Path, device: str = "auto", report_to: Sequence[str] = ()) -> pd.DataFrame:
    """Paired comparisons of a run's grid points (evaluating first where needed), as ``suite compare``: one row per
    compared number, with its difference, interval and Holm-adjusted p.

    >>> comparisons = suite.compare_run("results/toy")
    >>> comparisons[comparisons.p_holm < 0.05]
    """
    _command(["compare", str(run), "--device", device, "--quiet", *_report_to(report_to)])
    return read_run(run).comparisons


def build_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write a run's report (markdown, self-contained HTML, plots, image grids), as ``suite report``; returns its
    folder.

    >>> folder = suite.build_report("results/toy")
    >>> (folder / "index.html").is_file()
    True
    """
    _command(["report", str(run), *(["--out", str(out)] if out is not None else [])])
    return Path(out) if out is not None else Path(run) / "report"


def _report_to(trackers: Sequence[str]) -> list[str]:
    """``report_to=("tensorboard", "mlflow")`` as the command line's repeated ``--report-to``."""
    if isinstance(trackers, str):
        trackers = (trackers,)
    return [argument for tracker in trackers for argument in ("--report-to", tracker)]


def _command(argv: list[str]) -> int:
    """One command's handler on its parsed arguments: the command line's behaviour, errors raised, not printed."""
    args = build_parser().parse_args(argv)
    code = args.handler(args)
    if code:
        raise UserError(f"suite {' '.join(argv)} ended with exit code {code}")
    return code
