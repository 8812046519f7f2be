"""The registry of claim experiments: per name in a claim file's ``experiment:``, its measure and judge functions.

Each claim module registers its own experiment when it is imported, and the package imports every claim
module, so the registry is full as soon as any part of ``suite.analysis.claims`` is imported.

- ``measure(config, runs, options) -> {table name: DataFrame}`` runs and measures (phase 1);
- ``judges[method](claim, rules, tables, folder, data) -> Judgement`` reads those tables alone (phase 2) and
  judges them under one registered version of the claim's ``rules:`` (its ``method`` names the judge). A judge
  method is kept as long as a registration names it, so data can be judged under the rules in force when they
  were measured (``suite.analysis.registration``).
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
    judges: dict[str, Callable[..., Judgement]]  # rules.method -> judge
    description: str

    def judge(self, method: str) -> Callable[..., Judgement]:
        if method not in self.judges:
            raise KeyError(f"no judge for rules method {method!r}; known: {', '.join(self.judges)}")
        return self.judges[method]


EXPERIMENTS: Registry[Experiment] = Registry("claim experiment")
