"""The claims report: judge every measured claim from its tables and write report.md, index.html and figures.

Everything here reads ``report/data/<claim>/`` alone, so rebuilding gives the same bytes. Each claim's judge
(in its claim module, found through ``experiments.EXPERIMENTS``) returns a ``Judgement``: the verdict, one line
with the numbers that decide it, and the claim's section. The rules are written next to each judge and
repeated in the report, so a reader can disagree with a rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import re

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from suite.analysis.bench.summary import FORMER_MILLISECONDS
from suite.analysis.claims.experiments import EXPERIMENTS, Judgement
from suite.analysis.registration import (
    REGISTRY_NAME,
    Judging,
    Measured,
    Registration,
    changed_after_data_label,
    exploratory_label,
    history,
    read_measured,
    read_registry,
    rules_for,
)
from suite.analysis.report.render import Section, Table, Text, to_html, to_markdown
from suite.core.files import atomic_write_text
from suite.metrics import former_name

FIGURES = "figures"


# -- figures ------------------------------------------------------------------------------------------


def save_figure(figure, folder: Path, name: str) -> Path:
    path = Path(FIGURES) / f"{name}.png"
    (folder / FIGURES).mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(folder / path, dpi=90, metadata={"Software": None})
    plt.close(figure)
    return path


def copy_image(source: Path, folder: Path, name: str) -> Path:
    path = Path(FIGURES) / name
    (folder / FIGURES).mkdir(parents=True, exist_ok=True)
    (folder / path).write_bytes(source.read_bytes())
    return path


def errorbar(axis, rows: pd.DataFrame, x: str, y: str, label: str, suffixes=("_ci95_low", "_ci95_high")) -> None:
    """``rows[y]`` against ``rows[x]`` with its interval (columns ``y`` + each of ``suffixes``) as error bars."""
    low, high = rows[y + suffixes[0]], rows[y + suffixes[1]]
    axis.errorbar(rows[x], rows[y], yerr=[rows[y] - low, high - rows[y]], marker="o", capsize=2, label=label)


# -- the report ---------------------------------------------------------------------------------------


def read_claim(folder: Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    """A measured claim's data folder: its claim file as written, and its tables by name."""
    claim = yaml.safe_load((folder / "claim.yaml").read_text(encoding="utf-8"))
    tables = {path.stem: upgraded_data(pd.read_csv(path)) for path in sorted(folder.glob("*.csv"))}
    return claim, tables


def upgraded_data(table: pd.DataFrame) -> pd.DataFrame:
    """Claim data measured before one column convention (``<x>_low/_high``, milliseconds) in today's columns."""
    former = {column: column.replace("ms_per_step", "step_median_s") for column in table if "ms_per_step" in column}
    former |= {column: FORMER_MILLISECONDS[column] for column in table if column in FORMER_MILLISECONDS}
    table = table.assign(**{column: table[column] / 1e3 for column in former}).rename(columns=former)
    table = table.rename(columns=former_name)  # metric columns copied from runs
    return table.rename(columns=lambda column: re.sub(r"(?<!_ci95)_(low|high)$", r"_ci95_\1", column))


@dataclass(frozen=True)
class Judged:
    """A claim's verdict under the rules in force when its data were measured, and under any rule registered later."""

    claim: dict
    judgement: Judgement
    rule: str  # which registration judged it, and when
    exploratory: tuple[tuple[Registration, Judgement], ...]


def judging_of(entries: list[Registration], key: str, measured: Measured | None) -> Judging:
    """Data without a measurement record (measured before registration began) have no confirmatory rule."""
    if measured is None:
        return Judging(None, tuple(history(entries, key)))
    return rules_for(entries, key, measured)


def judge_all(report: Path) -> list[Judged]:
    entries = read_registry(report / "data" / REGISTRY_NAME)
    judged = []
    for folder in sorted((report / "data").iterdir()):
        if not (folder / "claim.yaml").is_file():
            continue
        claim, tables = read_claim(folder)
        experiment = EXPERIMENTS.get(
            claim.get("experiment", claim.get("measure"))
        )  # data measured before the key was renamed
        judging = judging_of(entries, f"claims/{folder.name}", read_measured(folder))
        later = list(judging.exploratory)
        if judging.confirmatory is not None:
            main, rule = judging.confirmatory, f"registered {judging.confirmatory.registered[:10]}, before the data"
            changed = changed_after_data_label(entries, f"claims/{folder.name}", main)
            rule += f"; {changed}" if changed else ""
        elif later:
            main = later.pop(0)
            rule = f"{exploratory_label(main)} (no rule was registered before these data)"
        else:
            raise ValueError(f"{folder}: no registered rules judge these data ({report / 'data' / REGISTRY_NAME})")
        judgement = experiment.judge(main.rules["method"])(claim, main.rules, tables, report, folder)
        exploratory = tuple(
            (entry, experiment.judge(entry.rules["method"])(claim, entry.rules, tables, report, folder))
            for entry in later
        )
        if exploratory:
            judgement = Judgement(
                judgement.verdict,
                judgement.numbers,
                Section(
                    judgement.section.title,
                    [
                        *judgement.section.blocks,
                        *(
                            Text(
                                f"Verdict under a rule registered after the data ({exploratory_label(entry)}): "
                                f"{other.verdict}. {other.numbers}."
                            )
                            for entry, other in exploratory
                        ),
                    ],
                ),
            )
        judged.append(Judged(claim, judgement, rule, exploratory))
    return sorted(judged, key=lambda one: one.claim["claim"])


def build_claims_report(report: Path, registry: Path | None = None) -> Path:
    """Write ``report.md`` and ``index.html`` from ``report/data`` alone; return the folder.

    ``registry``, where given, is copied into ``report/data`` first, so a rebuild from the data alone judges alike.
    """
    if registry is not None and registry.is_file():
        atomic_write_text(report / "data" / REGISTRY_NAME, registry.read_text(encoding="utf-8"))
    judged = judge_all(report)
    overview = pd.DataFrame(
        [
            {
                "claim": one.claim["claim"],
                "statement": one.claim["statement"],
                "verdict": one.judgement.verdict,
                "numbers": one.judgement.numbers,
                "rule": one.rule,
                "after the data": " / ".join(
                    f"{other.verdict} ({exploratory_label(entry)})" for entry, other in one.exploratory
                ),
            }
            for one in judged
        ]
    )
    sections = [
        Section(
            "Verdicts",
            [
                Text(
                    "Each claim of the background article, measured on the toy world (CPU) unless said otherwise. "
                    "Verdicts: supported, partly supported (some sub-claims hold; the others do not, or cannot be told "
                    "yet), not supported, "
                    "inconclusive (the tests cannot tell), not run here (needs hardware this build did not have). "
                    "Every number carries its 95% interval; rules are stated in each section. Each verdict is judged "
                    "under the rules registered before its data were measured (experiments/registry.yaml, "
                    "`suite claims --register`); a rule registered after the data is judged too and shown as "
                    "exploratory with its reason. Rebuild with `suite claims --report-only`; remeasure with "
                    "`suite claims` after deleting a claim's data folder."
                ),
                Table(overview),
            ],
        ),
        *(one.judgement.section for one in judged),
        Section(
            "Also: the DDIM collapse on the toy cascade",
            [
                Text(
                    "DDIM on a model that thresholds its x0 prediction (IF, the toy cascade) must step along the "
                    "thresholded x0 (`use_clipped_model_output`); diffusers' pipelines do not, and at guidance >= 3 "
                    "the toy cascade then collapsed to colour fields. Cause, per-step evidence and paired tests: "
                    "results/claims/ddim-collapse.md. Every DDIM number above uses the fixed step (the sampler "
                    "`ddim`); `ddim-raw-eps` keeps diffusers' step for comparison."
                )
            ],
        ),
    ]
    title = "The article's claims, measured"
    atomic_write_text(report / "report.md", to_markdown(title, sections))
    atomic_write_text(report / "index.html", to_html(title, sections, report))
    return report
