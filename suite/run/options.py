"""The options a user gives a run on the command line (device, dtype, shard, ...), apart from the sweep file, and
the timing settings that experiments built on runs share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from suite.core.settings import Frozen


@dataclass(frozen=True)
class RunOptions:
    out: Path
    device: str = "auto"
    dtype: str = "auto"
    rank: int = 0
    world_size: int = 1
    model_dirs: dict[str, Path] = field(default_factory=dict)
    progress: bool = True
    compile: bool = False  # torch.compile each UNet; compile time is recorded apart from generation time
    channels_last: bool = False  # channels-last memory layout for UNets and VAEs


@dataclass(frozen=True)
class EvaluateOptions:
    device: str = "auto"
    inception_weights: Path | None = None
    recompute: bool = False  # ignore finished grid points under evaluation/
    progress: bool = True


class TimingSettings(Frozen):
    """How presets are timed against each other (``timing:`` in ablation and claim files): ``repeats`` rounds,
    each timing every preset once on ``batch`` images, in turn (``runner.time_alternately``)."""

    batch: int = Field(16, ge=1, strict=True)
    repeats: int = Field(10, ge=2, strict=True)
