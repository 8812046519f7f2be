"""A claim file (``experiments/claims/NN-name.yaml``): the article's statement, how it is measured, and its sweeps.

```yaml
claim: 3                       # its number in DESIGN.md's list
title: Steps and samplers
statement: "20 steps often look almost identical to 50; ..."
experiment: steps              # which experiment (suite.analysis.claims.experiments.EXPERIMENTS)
sweeps:                        # optional: ordinary sweeps, each run into runs/<claim name>/<sweep name>
  ddpm: {presets: [...], samplers: [ddpm], steps: [25, 1000], ...}
settings: {reference: ...}     # optional: the experiment's own parameters
rules:                         # how the data are judged, registered before data (suite claims --register)
  method: steps/v2             # the judge (a version of the experiment's judging code)
  alpha: 0.05
  margins: {exact: 0.1, clip: 5.0}
```

The rules (and the experiment they belong to) are what ``suite claims --register`` hashes and records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from suite.analysis.claims.experiments import EXPERIMENTS
from suite.analysis.registration import Candidate
from suite.core.errors import UserError
from suite.run.config import ResolvedSweep, load_named_file, parse_sweep, resolve


class ClaimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    claim: int = Field(ge=1)
    title: str
    statement: str
    experiment: str  # a name in suite.analysis.claims.experiments.EXPERIMENTS
    sweeps: dict[str, dict[str, Any]] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    rules: dict[str, Any]  # the judging rules: ``method`` (which judge) and its thresholds, margins, families
    name: str = ""  # the file's stem, filled in by ``load_claim``

    @model_validator(mode="before")
    @classmethod
    def _former_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "measure" in data:
            raise ValueError("'measure:' is now 'experiment:' (the name of the claim's experiment)")
        return data


def load_claim(path: Path) -> ClaimConfig:
    """Read and validate one claim file: its sweeps are validated as sweeps, its experiment must exist."""

    config = load_named_file(path, ClaimConfig, "claim file")
    experiment = EXPERIMENTS.get(config.experiment)
    method = config.rules.get("method")
    if method not in experiment.judges:
        raise UserError(
            f"{path}: rules.method: {method!r} is not a judge of {config.experiment!r}; known: {', '.join(experiment.judges)}"
        )
    for sweep_name in config.sweeps:
        claim_sweep(config, sweep_name, path.parent)
    return config


def load_claims(folder: Path, names: list[str] | None = None) -> list[ClaimConfig]:
    """Every claim file in ``folder`` ordered by claim number, or those named (by file stem)."""
    if not folder.is_dir():
        raise UserError(f"claims folder not found: {folder}")
    paths = sorted(folder.glob("[0-9][0-9]-*.yaml"))  # NN-name.yaml; other files there are sweeps
    if names:
        stems = {path.stem: path for path in paths}
        unknown = [name for name in names if name not in stems]
        if unknown:
            raise UserError(f"unknown claim {unknown[0]!r}; valid: {', '.join(sorted(stems))}")
        paths = [stems[name] for name in names]
    configs = [load_claim(path) for path in paths]
    return sorted(configs, key=lambda config: (config.claim, config.name))


def claim_sweep(config: ClaimConfig, sweep_name: str, base_dir: Path) -> ResolvedSweep:
    """One of the claim's sweeps, validated and resolved like a sweep file; named ``<claim>-<sweep>``."""
    data = {"name": f"{config.name}-{sweep_name}", **config.sweeps[sweep_name]}
    return resolve(parse_sweep(data, f"{config.name}: sweeps.{sweep_name}"), base_dir, config.name)


def registered_rules(config: ClaimConfig) -> dict[str, Any]:
    """A claim's judging rules as registered: its experiment and its ``rules:``."""
    return {"experiment": config.experiment, **config.rules}


def registry_key(config: ClaimConfig) -> str:
    return f"claims/{config.name}"


def candidate(config: ClaimConfig, data_exist: bool = False) -> Candidate:
    """What ``suite claims --register`` records and measuring checks: the rules, and the design (settings and
    sweeps: prompts, seeds, grid points, reference), each hashed."""
    design = {"settings": config.settings, "sweeps": config.sweeps}
    return Candidate(registry_key(config), registered_rules(config), design, data_exist)
