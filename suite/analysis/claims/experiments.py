"""The registry of claim experiments: per name in a claim file's ``experiment:``, its measure and judge functions.

Each claim module registers its own experiment when it is imported, and the package imports every claim
module, so the registry is full as soon as any part of ``suite.analysis.claims`` is imported.

- ``measure(config, runs, options) -> {table name: DataFrame}`` runs and measures (phase 1);
- ``judge(claim, tables, folder, data) -> Judgement`` reads those tables alone (phase 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from suite.analysis.report.render import Section
from suite.core.registry import Registry


@dataclass(frozen=True)
class Judgement:
    """A judge's answer: the verdict, one line with the numbers that decide it, and the claim's report section."""

    verdict: str
    numbers: str
    section: Section


@dataclass(frozen=True)
class Experiment:
    measure: Callable[..., dict[str, pd.DataFrame]]
    judge: Callable[..., Judgement]
    description: str


EXPERIMENTS: Registry[Experiment] = Registry("claim experiment")
