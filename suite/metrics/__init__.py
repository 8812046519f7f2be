"""Metrics per grid point, as plug-ins: one module and one class each, registered here.

Evaluation, sweep validation, ``suite compare``, the report and ``suite list`` iterate over
``METRICS``; adding a metric is one module with a ``Metric`` subclass and one line below. Metrics describe
themselves (columns and their display formats, direction, networks, checks), so nothing outside this package
names a metric. ``settings`` holds the sweep's ``evaluation:`` section.

May import ``suite.prompts``, ``suite.toy``, ``suite.model`` and ``suite.core``.
"""

from __future__ import annotations

from suite.core.registry import Registry
from suite.metrics.base import Metric
from suite.metrics.clip_score import ClipScore
from suite.metrics.cmmd import Cmmd
from suite.metrics.composition import Composition
from suite.metrics.fid import Fid
from suite.metrics.flops_per_image import Flops
from suite.metrics.geneval import Geneval
from suite.metrics.hpsv2 import HpsV2
from suite.metrics.kid import Kid
from suite.metrics.pickscore import PickScore

METRICS: Registry[Metric] = Registry("metric")
for _metric in (Fid(), Kid(), ClipScore(), Cmmd(), Flops(), Composition(), Geneval(), PickScore(), HpsV2()):
    METRICS.register(_metric.name, _metric)


def needing_reference(names) -> list[str]:
    """The metrics among ``names`` that compare against real images."""
    return [name for name in names if METRICS.get(name).needs_reference]


def former_name(column: str) -> str:
    """Today's name of a metric column an earlier version wrote (each metric renames its own)."""
    for metric in METRICS.values():
        column = metric.former_name(column)
    return column
