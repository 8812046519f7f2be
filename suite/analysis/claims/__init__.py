"""The article's eight claims as experiments with verdicts (``suite claims``).

Each claim file in ``experiments/claims/`` names an experiment (``experiments.EXPERIMENTS``), the
sweeps it needs and its settings. ``suite claims`` runs it in two phases:

1. **measure**: run the claim's sweeps (ordinary, resumable run folders under ``<out>/runs/<claim>/``)
   and any measurement of its own (x0 trajectories, attention maps, timings), and write small tidy
   tables to ``<out>/report/data/<claim>/``, with the claim file beside them. A claim whose tables
   exist is not measured again.
2. **judge and report**: read those tables alone and write ``report.md`` and ``index.html`` with one
   section per claim: its verdict (supported / not supported / inconclusive / not run here), the numbers
   behind it with their intervals, and figures. Rebuilding from the same tables gives the same bytes.

The run folders are large and stay out of the repository; the report folder is small and committed.
("Claims" here are the article's statements; ``suite.run.leases`` is the unrelated work-item locking.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from suite.analysis.claims.claim_file import ClaimConfig, claim_sweep, load_claims
from suite.analysis.claims.experiments import EXPERIMENTS
from suite.analysis.claims.report import build_claims_report
from suite.core.files import atomic_write_bytes
from suite.run.evaluate import evaluate_run
from suite.run.options import EvaluateOptions, RunOptions
from suite.run.runner import run_sweep

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN = "supported", "not supported", "inconclusive", "not run here"


@dataclass(frozen=True)
class ClaimsOptions:
    claims_dir: Path = Path("experiments/claims")
    out: Path = Path("results/claims")
    device: str = "auto"
    names: tuple[str, ...] = ()
    progress: bool = True


def data_dir(out: Path, config: ClaimConfig) -> Path:
    return out / "report" / "data" / config.name


def runs_dir(out: Path, config: ClaimConfig) -> Path:
    return out / "runs" / config.name


def run_claim_sweeps(config: ClaimConfig, options: ClaimsOptions) -> dict[str, Path]:
    """Run (or resume) each of the claim's sweeps and evaluate it; returns the run folders by sweep name."""

    folders = {}
    for sweep_name in config.sweeps:
        resolved = claim_sweep(config, sweep_name, options.claims_dir)
        folder = runs_dir(options.out, config) / sweep_name
        summary = run_sweep(resolved, RunOptions(folder, options.device, progress=options.progress))
        if not summary.complete:
            raise RuntimeError(f"{folder}: the sweep did not complete")
        if resolved.sweep.metrics:
            evaluate_run(folder, EvaluateOptions(device=options.device, progress=options.progress))
        folders[sweep_name] = folder
    return folders


def measure(config: ClaimConfig, options: ClaimsOptions, log=print) -> Path:
    """Measure one claim unless its tables exist. Each table is written atomically, and the claim file last: a
    folder without it (an interrupted measurement) is measured again."""

    folder = data_dir(options.out, config)
    if (folder / "claim.yaml").is_file():
        log(f"{config.name}: measured already ({folder})")
        return folder
    experiment = EXPERIMENTS.get(config.measure)
    runs = run_claim_sweeps(config, options)
    tables = experiment.measure(config, runs, options)
    for name, frame in tables.items():
        atomic_write_bytes(folder / f"{name}.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    claim = config.model_dump(exclude={"name"})
    atomic_write_bytes(folder / "claim.yaml", yaml.safe_dump(claim, sort_keys=False).encode())  # written last
    log(f"{config.name}: measured ({', '.join(sorted(tables))})")
    return folder


def run_claims(options: ClaimsOptions, log=print) -> Path:
    """Measure every claim that has no tables yet, then build the report from the tables."""

    for config in load_claims(options.claims_dir, list(options.names) or None):
        measure(config, options, log)
    return build_claims_report(options.out / "report")


__all__ = ["NOT_RUN", "NOT_SUPPORTED", "SUPPORTED", "ClaimConfig", "ClaimsOptions", "load_claims", "run_claims"]
