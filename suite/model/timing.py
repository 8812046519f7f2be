"""Honest clocks: CUDA is synchronised before every reading, and peak memory is recorded."""

from __future__ import annotations

import itertools
import resource
import sys
import time
from dataclasses import dataclass, field

import torch

from suite.model.denoise import StepEvent


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a clock reading covers the work it claims to."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Clock:
    """``clock()`` returns seconds from ``perf_counter`` after synchronising the device."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self) -> float:
        synchronize(self.device)
        return time.perf_counter()


@dataclass
class StepTimer:
    """A per-step hook that records the wall time of each denoising step of one stage.

    On CUDA it records an event per step instead of synchronising, so timing does not stall the
    queue of kernels between steps; the events are read (one synchronisation) when the times are.
    """

    clock: Clock
    _marks: list = field(default_factory=list)

    @property
    def _events(self) -> bool:
        return self.clock.device.type == "cuda"

    def _mark(self):
        if self._events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return self.clock()

    def start(self) -> None:
        self._marks = [self._mark()]

    def __call__(self, event: StepEvent) -> None:
        self._marks.append(self._mark())

    @property
    def step_seconds(self) -> list[float]:
        marks = self._marks
        if self._events:
            if marks:
                marks[-1].synchronize()
            return [begin.elapsed_time(end) / 1000 for begin, end in itertools.pairwise(marks)]
        return [end - begin for begin, end in itertools.pairwise(marks)]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory in bytes and what it measures: CUDA allocations, or the process's max RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return int(rss * scale), "process_max_rss"
