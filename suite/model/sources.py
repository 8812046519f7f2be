"""Where a preset's parts come from: hub repositories, the public configs shipped with the suite, the local cache;
and which subfolder holds each kind of stage's scheduler."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """Where one repository-shaped folder of components lives on the Hugging Face hub."""

    repo_id: str
    revision: str | None = None  # None: the repository's default branch
    variant: str | None = None  # e.g. "fp16" weight files, used when loading in half precision


@dataclass(frozen=True)
class ReferenceConfigs:
    """A repository's architecture without weights: each subfolder's config is a file in suite/reference_configs."""

    files: Mapping[str, str]  # subfolder ("unet", "text_encoder", "scheduler", ...) -> file name

    def read(self, subfolder: str) -> dict:
        folder = Path(__file__).parent / "reference_configs"
        return json.loads((folder / self.files[subfolder]).read_text())


SCHEDULER_FOLDERS = {
    "prior": "prior_scheduler",
    "unclip-decoder": "decoder_scheduler",
    "unclip-sr": "super_res_scheduler",
}


def scheduler_folder(kind: str) -> str:
    """The subfolder holding a stage's scheduler config: ``scheduler/``, or unCLIP's one per stage."""
    return SCHEDULER_FOLDERS.get(kind, "scheduler")


def cache_root() -> Path:
    """Where built-in presets are materialised: $SUITE_CACHE, else ~/.cache/suite."""
    return Path(os.environ.get("SUITE_CACHE", Path.home() / ".cache" / "suite"))
