"""The metric plug-in interface: what a metric computes for a grid point, how it is compared between two.

A metric is one class in one module, registered in ``suite.metrics.METRICS``. Evaluation calls
``evaluate`` once per grid point; ``suite compare`` calls ``compare`` on pairs of grid points that
share prompts and seeds. Everything a metric needs comes through a ``GridPoint`` (images, prompts,
features of any network, the run's networks and reference sets) or a ``PointRecord`` (what
evaluation kept of a point: its row, its per-image scores, its features).
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd
import torch

from suite.core import paired, stats
from suite.metrics.reference import extract
from suite.metrics.settings import Evaluation
from suite.model.stages import StageSettings


class EvaluationContext(Protocol):
    """What a metric may ask of the evaluation that runs it (``suite.run.evaluate.Evaluator`` provides it).

    Each call builds its network, reference set or model once per run and returns the cached one after.
    """

    sweep: Any  # the resolved sweep; metrics read ``sweep.evaluation``

    def network(self, name: str) -> Any: ...  # a FeatureNetwork of ``suite.metrics.networks``

    def reference(self, name: str) -> Any: ...  # the run's ReferenceFeatures for that network

    def clip(self) -> Any: ...  # the run's CLIP model (``evaluation.clip_model``)

    def model(self, key: tuple, load: Callable[[Any], Any]) -> Any: ...  # a metric's own model, loaded once per key

    def cost(self, preset_name: str) -> Any: ...  # the preset's PipelineCost (FLOP counts)


@dataclass
class GridPoint:
    """One grid point being evaluated: its sample rows (in order), images, stage settings and features."""

    evaluator: EvaluationContext
    rows: pd.DataFrame
    images: list[np.ndarray]
    settings: tuple[StageSettings, ...]
    features_by_network: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per part ("features: inception", ...)

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Add the wall time of the block to ``seconds[part]`` (where evaluation's time goes, per metric part)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - started

    @property
    def prompts(self) -> list[str]:
        return list(self.rows["prompt"])

    @property
    def units(self) -> stats.Units:
        """Each image's prompt: the unit every interval of this point resamples."""
        return stats.Units.of(self.rows["prompt_index"].to_numpy())

    @property
    def evaluation(self) -> Evaluation:
        return self.evaluator.sweep.evaluation

    def features(self, network: str) -> np.ndarray:
        """This point's image features from ``network``, extracted once and shared by every metric."""
        if network not in self.features_by_network:
            with self.timed(f"features: {network}"):
                self.features_by_network[network] = extract(self.evaluator.network(network), self.images)
        return self.features_by_network[network]


@dataclass
class PointRecord:
    """What evaluation kept of one grid point, for paired comparisons."""

    row: pd.Series  # its metrics row
    scores: pd.DataFrame  # per image, in the order of its features: prompt_index, seed_index, per-image values
    features: Callable[[str], np.ndarray]  # network name -> features, one row per image of ``scores``
    reference: Callable[[str], Any]  # network name -> the run's ReferenceFeatures
    set_resamples: int = stats.SET_RESAMPLES  # bootstrap resamples of set-metric comparisons (the run's setting)
    set_interval: str = "bootstrap"  # how set metrics are compared: "delta" or "bootstrap" (the run's setting)


class Metric(ABC):
    """One metric: its columns, its direction, how it is computed per grid point and compared between two."""

    name: ClassVar[str]
    description: ClassVar[str]
    label: ClassVar[str] = ""  # its name in figure labels (default: the headline column)
    headline: ClassVar[str]  # the metrics-table column of its main number
    higher_is_better: ClassVar[bool | None]  # None: a cost, not a quality
    display: ClassVar[str] = ".4g"  # format of its numbers in reports
    needs_reference: ClassVar[bool] = False
    needs_setting: ClassVar[str | None] = None  # an ``evaluation`` key the sweep must set (a local model's location)
    setting_layout: ClassVar[str] = ""  # what that setting must point at, for the one-line error
    reference_statistics_suffice: ClassVar[bool] = False  # precomputed FID statistics are reference enough
    uses_clip_model: ClassVar[bool] = False  # reads ``evaluation.clip_model`` (checked before generation)
    shown: ClassVar[Mapping[str, str]] = {}  # metrics-table columns a report shows -> format; default the headline
    needs_costs: ClassVar[bool] = False  # reads the run's costs table (FLOPs per model evaluation)
    best_rank: ClassVar[int | None] = None  # preference when a report picks the best point: 0 first, None never
    alignment: ClassVar[bool] = False  # measures how closely images follow their prompts (a report's x axis)
    flags: ClassVar[Mapping[str, str]] = {}  # column -> boolean column that marks its value as unreliable (a dagger)

    def shown_columns(self) -> dict[str, str]:
        """The metrics-table columns a report shows, each with its display format."""
        return dict(self.shown) or {self.headline: self.display}

    def interval_of(self, column: str) -> tuple[str, str]:
        """The metrics-table columns that hold the 95% interval of ``column``."""
        return f"{column}_ci95_low", f"{column}_ci95_high"

    def owns_image_score(self, column: str) -> bool:
        """Whether ``column`` of scores.parquet is one of this metric's per-image values."""
        return False

    def main_image_score(self) -> str | None:
        """The per-image value ``suite diff`` shows first (None: the metric has no per-image values)."""
        return None

    def former_name(self, column: str) -> str:
        """Today's name of a column this metric wrote under an earlier name; other columns unchanged."""
        return column

    def image_score_is_binary(self, column: str) -> bool:
        """Whether that per-image value is a 0/1 answer (compared by McNemar's test, not a mean test)."""
        return False

    def networks(self, evaluation: Evaluation) -> set[str]:
        """Feature networks this metric extracts with (checked before generation, features stored for comparisons)."""
        return set()

    def check(self, evaluation: Evaluation) -> None:  # noqa: B027 (optional: most metrics load nothing of their own)
        """Before generation: raise a one-line UserError if what this metric loads is missing."""

    @abstractmethod
    def evaluate(self, point: GridPoint) -> tuple[dict[str, Any], pd.DataFrame | None]:
        """Its columns of the point's metrics row, and its per-image scores (one row per image, or None)."""

    def compare(self, a: PointRecord, b: PointRecord) -> list[dict[str, Any]]:
        """Paired tests of b against a: one row per compared number (``comparison_row``)."""
        return []


def interval_columns(prefix: str, interval: stats.Interval) -> dict[str, Any]:
    """``<prefix>_ci95_low``, ``_ci95_high`` and ``_interval`` (the method) of one number."""
    return {
        f"{prefix}_ci95_low": interval.low,
        f"{prefix}_ci95_high": interval.high,
        f"{prefix}_interval": interval.method,
    }


def comparison_row(metric: str, a: float, b: float, test: paired.PairedTest, higher_is_better: bool | None) -> dict:
    """One row of comparisons.csv; ``interval_at`` stays with the row until the family's adjusted interval is set."""
    return {
        "metric": metric,
        "higher_is_better": higher_is_better,
        "value_a": a,
        "value_b": b,
        "difference": test.difference,
        "difference_ci95_low": test.low,
        "difference_ci95_high": test.high,
        "p_value": test.p_value,
        "p_resolution": test.p_resolution,
        "n_pairs": test.n_pairs,
        "n_prompts": test.n_prompts,
        "test": test.test,
        "interval_at": test.interval_at,
    }


def paired_rows(a: PointRecord, b: PointRecord) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the images a and b share, paired by (prompt, seed), in the same order."""
    keys = ["prompt_index", "seed_index"]
    left = a.scores[keys].reset_index(drop=True).reset_index(names="row_a")
    right = b.scores[keys].reset_index(drop=True).reset_index(names="row_b")
    paired = left.merge(right, on=keys, how="inner", validate="one_to_one")
    return paired["row_a"].to_numpy(), paired["row_b"].to_numpy()


def paired_units(a: PointRecord, rows_a: np.ndarray) -> stats.Units:
    """The prompt of each shared image: the unit paired tests resample and permute."""
    return stats.Units.of(a.scores["prompt_index"].to_numpy()[rows_a])


def paired_set_test(
    a: PointRecord,
    b: PointRecord,
    network: str,
    statistic: Callable[[np.ndarray, stats.Units], Callable[[np.ndarray], float]],
    resamples: int | None = None,
) -> paired.PairedTest:
    """A set statistic of b against a: bootstrap over prompts, both points jointly, for the interval and for p.

    ``statistic(features, units)`` returns a function of row indices into ``features`` (here both points' shared
    images stacked, a's first; ``units`` labels the pairs).
    """
    rows_a, rows_b = paired_rows(a, b)
    stacked = np.concatenate([a.features(network)[rows_a], b.features(network)[rows_b]])
    units = paired_units(a, rows_a)
    of_rows = statistic(stacked, units)
    weighted = getattr(of_rows, "weighted", None)  # kernel statistics take many resamples at once
    resamples = resamples or a.set_resamples
    return paired.set_difference_test(of_rows, units, resamples, weighted=weighted)


def paired_influence_test(
    a: PointRecord,
    b: PointRecord,
    network: str,
    value_and_influence: Callable[[np.ndarray, stats.Units], tuple[float, np.ndarray]],
) -> paired.PairedTest:
    """A set statistic of b against a by the delta method (``paired.influence_difference_test``).

    ``value_and_influence(features, units)`` gives the statistic of one point's shared images and each image's
    influence on it.
    """
    rows_a, rows_b = paired_rows(a, b)
    units = paired_units(a, rows_a)
    value_a, influence_a = value_and_influence(a.features(network)[rows_a], units)
    value_b, influence_b = value_and_influence(b.features(network)[rows_b], units)
    return paired.influence_difference_test(value_a, value_b, influence_a, influence_b, units)


class PerImageScore(Metric):
    """A metric that scores each image against its prompt on its own (CLIP score, preference models): per grid point
    the mean with a BCa interval over prompts; points compared by a sign-flip test of whole prompts."""

    column: ClassVar[str]  # the per-image score's column in scores.parquet

    def owns_image_score(self, column: str) -> bool:
        return column == self.column

    def main_image_score(self) -> str | None:
        return self.column

    def former_name(self, column: str) -> str:
        # its interval was named after the per-image column, not the mean it belongs to
        for part in ("ci95_low", "ci95_high", "interval"):
            if column == f"{self.column}_{part}":
                return f"{self.headline}_{part}"
        return column

    @abstractmethod
    def score(self, point: GridPoint) -> tuple[np.ndarray, dict[str, Any]]:
        """Per-image scores, and the row's other columns (which model made them)."""

    def evaluate(self, point: GridPoint) -> tuple[dict[str, Any], pd.DataFrame]:
        scores, described = self.score(point)
        with point.timed(f"{self.name}: interval"):
            interval = stats.mean_interval(scores, point.units)
        row = {self.headline: float(scores.mean())} | interval_columns(self.headline, interval)
        return row | described, pd.DataFrame({self.column: scores})

    def compare(self, a: PointRecord, b: PointRecord) -> list[dict[str, Any]]:
        rows_a, rows_b = paired_rows(a, b)
        values_a = a.scores[self.column].to_numpy()[rows_a]
        values_b = b.scores[self.column].to_numpy()[rows_b]
        test = paired.paired_permutation(values_a, values_b, paired_units(a, rows_a))
        return [comparison_row(self.headline, values_a.mean(), values_b.mean(), test, self.higher_is_better)]


class PreferenceModel(ABC):
    """A CLIP-like model that scores each image against its prompt: ``scale() * cos(image, prompt)``, in batches."""

    batch_size: ClassVar[int] = 32

    @abstractmethod
    def embed(self, images: list[np.ndarray], prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text embeddings of one batch, on the model's device."""

    def scale(self) -> torch.Tensor | float:
        return 1.0

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        scores = []
        for start in range(0, len(images), self.batch_size):
            end = start + self.batch_size
            image_embeds, text_embeds = self.embed(images[start:end], prompts[start:end])
            image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)
            text_embeds = torch.nn.functional.normalize(text_embeds, dim=-1)
            scores.append((self.scale() * (image_embeds * text_embeds).sum(dim=-1)).double().cpu().numpy())
        return np.concatenate(scores)


class PreferenceScore(PerImageScore):
    """A per-image score from a local human-preference model, which the sweep's ``evaluation.<needs_setting>``
    locates (PickScore, HPS v2); the model is loaded once per run and setting."""

    higher_is_better = True

    @abstractmethod
    def check_setting(self, setting: Any) -> None:
        """Raise a one-line UserError if the setting does not point at a loadable model."""

    @abstractmethod
    def load(self, setting: Any, device: Any) -> PreferenceModel:
        """The model the setting names, on ``device``."""

    @abstractmethod
    def describe(self, setting: Any) -> dict[str, Any]:
        """The metrics-row columns that say which model scored (also the model's cache key)."""

    def check(self, evaluation: Evaluation) -> None:
        self.check_setting(getattr(evaluation, self.needs_setting))

    def score(self, point: GridPoint) -> tuple[np.ndarray, dict[str, Any]]:
        setting = getattr(point.evaluation, self.needs_setting)
        described = self.describe(setting)
        model = point.evaluator.model((self.name, *described.values()), lambda device: self.load(setting, device))
        return model(point.images, point.prompts), described
