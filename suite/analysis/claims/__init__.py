"""The article's eight claims as experiments with verdicts (``suite claims``).

This package owns the claim files (``experiments/claims/NN-name.yaml``), one module per claim holding
its measure and its judge, the registry that names them, and the claims report. As part of the analysis
layer it may import ``suite.run``, ``suite.metrics``, ``suite.prompts``, ``suite.toy``, ``suite.model``,
``suite.core`` and its ``suite.analysis`` siblings (bench, costs, diff, report), never ``suite.cli``.
Its modules import one way, and none imports this package file:

- ``experiments``: the registry (claim file's ``experiment:`` -> measure and judges, one per rules method);
  ``claim_file``: the files; ``plan``: prompts each comparison needs for 80% power, from a pilot;
- ``common``: what the claim modules share; ``report``: figures, and the report built from the judges;
- one module per claim, each registering its experiment: ``values_per_step`` (1), ``structure`` (2),
  ``steps`` (3), ``guidance`` (4, its rules in ``guidance_rules``), ``determinism`` (5), ``attention_bleed`` (6, with the recorder in
  ``attention``), ``cost`` (7), ``step_time`` (8); ``saturation`` holds claim 4's image measures.

``suite claims`` runs in two phases:

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

from pathlib import Path

import yaml

from suite.analysis.claims import (  # each claim module registers its experiment in EXPERIMENTS
    attention_bleed,
    cost,
    determinism,
    guidance,
    step_time,
    steps,
    structure,
    values_per_step,
)
from suite.analysis.claims.claim_file import ClaimConfig, candidate, load_claims
from suite.analysis.claims.common import (
    INCONCLUSIVE,
    NOT_RUN,
    NOT_SUPPORTED,
    PARTLY,
    SUPPORTED,
    ClaimsOptions,
    data_dir,
    run_claim_sweeps,
)
from suite.analysis.claims.experiments import EXPERIMENTS
from suite.analysis.claims.report import build_claims_report
from suite.analysis.registration import (
    MARKER,
    begin_measurement,
    register_all,
    registry_path,
    require_registered,
    write_measured,
)
from suite.core.files import atomic_write_bytes

CLAIM_MODULES = (values_per_step, structure, steps, guidance, determinism, attention_bleed, cost, step_time)


def measure(config: ClaimConfig, options: ClaimsOptions, log=print) -> Path:
    """Measure one claim unless its tables exist. Each table is written atomically, and the claim file last: a
    folder without it (an interrupted measurement) is measured again."""

    folder = data_dir(options.out, config)
    if (folder / "claim.yaml").is_file():
        log(f"{config.name}: measured already ({folder})")
        return folder
    registry = registry_path(options.claims_dir.parent)
    registration = require_registered(registry, candidate(config))
    # the measurement's time: after the rules were checked, before any data; a resumed one keeps its first start
    began = begin_measurement(registry, options.out / "runs" / config.name / MARKER, registration)
    experiment = EXPERIMENTS.get(config.experiment)
    runs = run_claim_sweeps(config, options)
    tables = experiment.measure(config, runs, options)
    for name, frame in tables.items():
        atomic_write_bytes(folder / f"{name}.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    write_measured(folder, registration, began)
    claim = config.model_dump(exclude={"name"})
    atomic_write_bytes(folder / "claim.yaml", yaml.safe_dump(claim, sort_keys=False).encode())  # written last
    log(f"{config.name}: measured ({', '.join(sorted(tables))})")
    return folder


def run_claims(options: ClaimsOptions, log=print) -> Path:
    """Measure every claim that has no tables yet, then build the report from the tables."""

    configs = load_claims(options.claims_dir, list(options.names) or None)
    for config in configs:  # every claim's rules checked before anything is measured
        require_registered(registry_path(options.claims_dir.parent), candidate(config))
    for config in configs:
        measure(config, options, log)
    return build_claims_report(options.out / "report", registry_path(options.claims_dir.parent))


def register_claims(options: ClaimsOptions, reason: str = "", log=print) -> list[str]:
    """Register every claim file's rules and design (those named, or all) that differ from their latest
    registration; all are checked before the registry is written."""
    path = registry_path(options.claims_dir.parent)
    configs = load_claims(options.claims_dir, list(options.names) or None)
    candidates = [candidate(config, (data_dir(options.out, config) / "claim.yaml").is_file()) for config in configs]
    added = {entry.key: entry for entry in register_all(path, candidates, reason)}
    for config, one in zip(configs, candidates):
        entry = added.get(one.key)
        if entry is None:
            log(f"{config.name}: registered already ({path})")
        else:
            log(
                f"{config.name}: registered {entry.hash} at {entry.registered}"
                + (" (after data)" if entry.after_data else "")
            )
    return [config.name for config, one in zip(configs, candidates) if one.key in added]


__all__ = [
    "CLAIM_MODULES",
    "EXPERIMENTS",
    "INCONCLUSIVE",
    "NOT_RUN",
    "NOT_SUPPORTED",
    "PARTLY",
    "SUPPORTED",
    "ClaimConfig",
    "ClaimsOptions",
    "build_claims_report",
    "load_claims",
    "measure",
    "register_claims",
    "run_claims",
]
