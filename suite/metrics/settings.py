"""What the metrics read from a sweep's ``evaluation:`` section: feature networks, CLIP model, reference set,
comparison baseline and the local models of GenEval, PickScore and HPS v2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from suite.core.registry import known
from suite.core.settings import Frozen, Number
from suite.metrics.networks import CLIP_MODELS, FEATURE_NETWORKS


class ReferenceSpec(Frozen):
    """The real images FID / KID / CMMD compare against: exactly one of a built-in generator, a folder of
    images, or precomputed FID statistics (an .npz with ``mu`` and ``sigma``; FID only)."""

    builtin: str | None = None
    folder: str | None = None
    statistics: str | None = None
    coco: bool | None = None  # true: the real images of the sampled COCO captions (prompts: {coco: ...})
    files: tuple[str, ...] | None = None  # image files; what coco: true resolves to (one per prompt)
    count: int = Field(default=2048, ge=2, strict=True)  # images drawn from a built-in generator
    seed: int = Field(default=0, ge=0, strict=True)
    resolution: int | None = Field(default=None, ge=8, strict=True)  # files: centred square resized to this (256)

    @model_validator(mode="after")
    def _exactly_one(self) -> ReferenceSpec:
        given = [name for name in ("builtin", "folder", "statistics", "coco", "files") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of 'builtin', 'folder', 'statistics', 'files' or 'coco: true'")
        if self.builtin is not None and self.builtin != "toy":
            raise ValueError(f"unknown built-in reference set {self.builtin!r}; valid: toy")
        return self


class BaselineSpec(Frozen):
    """The grid point every other point of a preset is compared with (``suite compare``)."""

    sampler: str
    num_inference_steps: StrictInt = Field(ge=1, alias="steps")
    guidance_scale: Number = Field(ge=0, alias="guidance")


class GenevalSpec(Frozen):
    """GenEval's detector (a local transformers Mask2Former folder) and the reference evaluator's options."""

    detector: str
    threshold: float = Field(default=0.3, ge=0, le=1)
    counting_threshold: float = Field(default=0.9, ge=0, le=1)
    max_objects: int = Field(default=16, ge=1, strict=True)
    max_overlap: float = Field(default=1.0, gt=0, le=1)
    position_margin: float = Field(default=0.1, ge=0)


class HpsSpec(Frozen):
    """HPS v2's checkpoint and open_clip architecture (paths relative to the sweep file)."""

    checkpoint: str
    architecture: str = "ViT-H-14"
    architecture_config: str | None = (
        None  # an open_clip model-config JSON, for an architecture open_clip does not ship
    )


class Evaluation(Frozen):
    """Which networks the metrics use; real runs keep the defaults, the toy world names its own CLIP."""

    features: str = "inception"  # FID / KID feature network
    cmmd_features: str = "clip"  # CMMD's CLIP image embeddings
    clip_model: str = "openai-vit-l-14"  # CLIP score
    reference: ReferenceSpec | None = None
    set_resamples: int = Field(default=1000, ge=0, strict=True)  # bootstrap of FID / KID / CMMD; 0: no interval
    # how FID / KID / CMMD (and FID_inf) get their intervals and comparisons: the delta method (influence functions
    # summed per prompt: one pass) or the bootstrap over prompts (``set_resamples`` / ``fid_inf_resamples``)
    set_interval: Literal["delta", "bootstrap"] = "delta"
    fid_inf: bool = Field(default=True, strict=True)  # FID extrapolated to infinitely many images
    fid_inf_resamples: int = Field(default=200, ge=0, strict=True)  # FID_inf's interval, refitted per resample
    baseline: BaselineSpec | None = None  # suite compare's within-preset baseline; default: the most expensive point
    geneval: GenevalSpec | None = None  # the geneval metric's detector; colours use clip_model, as GenEval does
    pickscore: str | None = None  # the pickscore metric's local CLIPModel + processor folder
    hpsv2: HpsSpec | None = None  # the hpsv2 metric's checkpoint and architecture

    @field_validator("features", "cmmd_features")
    @classmethod
    def _known_network(cls, value: str) -> str:
        return known(FEATURE_NETWORKS, value)

    @field_validator("clip_model")
    @classmethod
    def _known_clip(cls, value: str) -> str:
        return known(CLIP_MODELS, value)

    def with_absolute_model_paths(self, base_dir: Path) -> Evaluation:
        """GenEval's detector, PickScore's folder and HPS v2's files given relative to the sweep file, made absolute."""

        def absolute(value: str) -> str:
            return value if Path(value).is_absolute() else str((base_dir / value).resolve())

        evaluation = self
        if self.geneval is not None:
            detector = absolute(self.geneval.detector)
            evaluation = evaluation.model_copy(
                update={"geneval": self.geneval.model_copy(update={"detector": detector})}
            )
        if self.pickscore is not None:
            evaluation = evaluation.model_copy(update={"pickscore": absolute(self.pickscore)})
        if self.hpsv2 is not None:
            paths = {
                key: absolute(value)
                for key in ("checkpoint", "architecture_config")
                if (value := getattr(self.hpsv2, key)) is not None
            }
            evaluation = evaluation.model_copy(update={"hpsv2": self.hpsv2.model_copy(update=paths)})
        return evaluation


ADDED_EVALUATION_KEYS = ("geneval", "pickscore", "hpsv2")


ADDED_REFERENCE_KEYS = ("coco", "files", "resolution")


def without_unset_added_keys(evaluation: dict[str, Any]) -> dict[str, Any]:
    """An evaluation as dumped, less the keys added after run folders existed, where unset: hashes and cache keys
    of earlier runs stay as they were."""
    evaluation = {
        key: value for key, value in evaluation.items() if key not in ADDED_EVALUATION_KEYS or value is not None
    }
    reference = evaluation.get("reference")
    if isinstance(reference, dict):
        evaluation["reference"] = {
            key: value for key, value in reference.items() if key not in ADDED_REFERENCE_KEYS or value is not None
        }
    return evaluation
