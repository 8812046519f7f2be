"""``suite ablation``: a 2x2 ablation at one training budget that separates two factors, e.g. where the
model denoises (latent vs pixel cascade) from which text encoder it reads (CLIP-style vs T5-style).

An ablation file (``experiments/ablation.yaml``) names the two factors and their levels, the preset of
each cell, and one ordinary sweep with one grid point per cell (same prompts, seeds, sampler, steps and
guidance for all four). ``suite ablation`` runs in two phases, like ``suite claims``:

1. **measure**: run and evaluate the sweep (a resumable run folder ``<out>/run``), time the four cells
   alternately, and write small tidy tables to ``<out>/report/data/``, the ablation file last:
   - ``cells.csv``: each measure of each cell with its interval from the evaluation;
   - ``effects.csv``: both main effects, the interaction (difference of differences) and the four simple
     effects of each measure, each a contrast over the four cells with a bootstrap interval that
     resamples prompts jointly for all cells (``paired.contrast_bootstrap``), Holm-adjusted within the
     families the ablation file names, with each estimate's interval at its family's Bonferroni width;
   - ``cost.csv`` / ``cost_effects.csv``: seconds and FLOPs per image, and the factors' effects on them
     as ratios (contrasts of log seconds, resampling timing rounds);
   - ``training.csv``: the cells' training budget from their ``training.json``.
2. **report**: ``report.md``, ``index.html`` and a figure, from those tables alone (``--report-only``
   rebuilds them byte for byte).

Effects are differences of the second level minus the first (the baseline). With cells ordered
(a0 b0, a0 b1, a1 b0, a1 b1): main effect of A = mean over B of (a1 - a0), weights (-1/2, -1/2, 1/2, 1/2);
interaction = (a1 b1 - a1 b0) - (a0 b1 - a0 b0), weights (1, -1, -1, 1).
"""

from __future__ import annotations

from pathlib import Path

from suite.analysis.ablation.design import load_ablation
from suite.analysis.ablation.report import build_ablation_report
from suite.analysis.ablation.runs import measure
from suite.analysis.registration import registry_path


def run_ablation(path: Path, out: Path, device: str = "auto", progress: bool = True) -> Path:
    """Measure (unless measured) and build the report; returns the report folder."""

    config = load_ablation(path)
    measure(config, path.parent, out, device, progress)
    return build_ablation_report(out / "report", registry_path(path.parent))
