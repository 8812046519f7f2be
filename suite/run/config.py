"""Sweep files: YAML validated into typed, frozen config, resolved with every default filled in.

One name per knob: code and tables use diffusers' names; the sweep file keeps short keys as
aliases, and config.yaml (and so every config hash) is written with the short keys.

| sweep file key | code and tables           | samples / metrics column of stage *k* |
|----------------|---------------------------|---------------------------------------|
| ``steps``      | ``num_inference_steps``   | ``stage<k>_num_inference_steps``      |
| ``guidance``   | ``guidance_scale``        | ``stage<k>_guidance_scale``           |
| ``noise_level``| ``noise_level``           | ``stage<k>_noise_level``              |
| ``strength``   | ``strength``              | ``stage<k>_strength``                 |
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from suite.core.errors import UserError
from suite.core.registry import known
from suite.core.settings import Frozen, Number
from suite.core.yamlfile import read_yaml
from suite.metrics import METRICS, needing_reference
from suite.metrics.settings import Evaluation, without_unset_added_keys
from suite.model.presets import PRESETS
from suite.model.samplers import SAMPLERS
from suite.prompts.coco import sample_coco
from suite.prompts.sets import PROMPT_SETS, check_filters, filtered_prompts, read_prompt_file

TRACKERS = ("tensorboard", "mlflow", "wandb")  # experiment trackers a run can log to (suite.analysis.tracking)


class StageOverride(Frozen):
    """Fixed values for one stage of a preset, replacing what the grid or preset would give it."""

    sampler: str | None = None
    num_inference_steps: int | None = Field(default=None, ge=1, alias="steps", strict=True)
    guidance_scale: Number | None = Field(default=None, ge=0, alias="guidance")
    noise_level: int | None = Field(default=None, ge=0, le=999, strict=True)
    strength: float | None = Field(default=None, gt=0, le=1)  # pixel SR: start partway from the upsampled image

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        return value if value is None else known(SAMPLERS, value)

    @field_validator("guidance_scale")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class CocoSpec(Frozen):
    """COCO captions drawn with a fixed seed (``suite.prompts.coco``); paths relative to the sweep file."""

    captions: str  # captions_val2014.json
    images: str  # the folder of val2014 images
    count: int = Field(default=30000, ge=1, strict=True)  # the literature's FID-30k
    seed: int = Field(default=0, ge=0, strict=True)


class PromptSpec(Frozen):
    """Exactly one of: a built-in set, a file (relative to the sweep file), an inline list, or COCO captions."""

    set: str | None = None
    file: str | None = None
    list: tuple[str, ...] | None = None
    coco: CocoSpec | None = None
    limit: int | None = Field(default=None, ge=1, strict=True)
    # filters on a set's metadata, one value or a list (any of them): parti's category / challenge, geneval's tag
    category: tuple[str, ...] | None = None
    challenge: tuple[str, ...] | None = None
    tag: tuple[str, ...] | None = None

    @field_validator("category", "challenge", "tag", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> PromptSpec:
        given = [name for name in ("set", "file", "list", "coco") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'set', 'file', 'list' or 'coco'")
        if self.set is not None:
            known(PROMPT_SETS, self.set)

            try:
                check_filters(self.set, self.filters)
            except UserError as error:
                raise ValueError(str(error)) from None
        elif self.filters:
            raise ValueError(f"filters {sorted(self.filters)} apply to a built-in set ('set'), not to a file or list")
        return self

    @property
    def filters(self) -> dict[str, tuple[str, ...]]:
        return {name: getattr(self, name) for name in ("category", "challenge", "tag") if getattr(self, name)}


class Sweep(Frozen):
    """A sweep as written in YAML; ``resolve`` turns it into a ResolvedSweep."""

    name: str = Field(default="sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(default=0, ge=0, strict=True)
    presets: tuple[str, ...] = Field(min_length=1)
    samplers: tuple[str, ...] = Field(min_length=1)
    num_inference_steps: tuple[StrictInt, ...] = Field(min_length=1, alias="steps")
    guidance_scale: tuple[Number, ...] = Field(min_length=1, alias="guidance")
    seeds_per_prompt: int = Field(default=1, ge=1, strict=True)
    batch_size: int = Field(default=8, ge=1, strict=True)
    prompts: PromptSpec
    stages: dict[str, dict[str, StageOverride]] = Field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    evaluation: Evaluation = Field(default_factory=Evaluation)
    tracking: tuple[str, ...] = ()  # experiment trackers to log to; where results go, not what they are: not hashed

    @field_validator("tracking")
    @classmethod
    def _known_trackers(cls, values):
        unknown = [value for value in values if value not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown trackers {unknown}; known: {list(TRACKERS)}")
        return tuple(dict.fromkeys(values))

    @field_validator("presets", "samplers", "metrics")
    @classmethod
    def _known_names(cls, values, info):
        registry = {"presets": PRESETS, "samplers": SAMPLERS, "metrics": METRICS}[info.field_name]
        return tuple(known(registry, value) for value in values)

    @field_validator("num_inference_steps")
    @classmethod
    def _positive_steps(cls, values):
        if any(value < 1 for value in values):
            raise ValueError("every step count must be >= 1")
        return values

    @field_validator("guidance_scale")
    @classmethod
    def _valid_guidance(cls, values):
        if any(not math.isfinite(value) or value < 0 for value in values):
            raise ValueError("every guidance scale must be a finite number >= 0")
        return values

    @model_validator(mode="after")
    def _coco_reference_has_coco_prompts(self) -> Sweep:
        reference = self.evaluation.reference
        if reference is not None and reference.coco and self.prompts.coco is None:
            raise ValueError("evaluation.reference.coco pairs with COCO prompts: set prompts: {coco: ...}")
        return self

    @model_validator(mode="after")
    def _metrics_have_their_settings(self) -> Sweep:
        for name in self.metrics:
            metric = METRICS.get(name)
            if metric.needs_setting and getattr(self.evaluation, metric.needs_setting) is None:
                raise ValueError(f"metric {name} needs evaluation.{metric.needs_setting}: {metric.setting_layout}")
        return self

    @model_validator(mode="after")
    def _distribution_metrics_have_a_reference(self) -> Sweep:
        needing = needing_reference(self.metrics)
        if needing and self.evaluation.reference is None:
            raise ValueError(f"metrics {needing} compare against real images: set evaluation.reference")
        features_needed = [name for name in needing if not METRICS.get(name).reference_statistics_suffice]
        if self.evaluation.reference and self.evaluation.reference.statistics and features_needed:
            served = [name for name, metric in METRICS.items() if metric.needs_reference]
            need_features = [name for name in served if not METRICS.get(name).reference_statistics_suffice]
            suffice = [name for name in served if name not in need_features]
            raise ValueError(
                f"{' and '.join(need_features)} need reference images or features; "
                f"FID statistics alone serve only {' and '.join(suffice)}"
            )
        return self

    @model_validator(mode="after")
    def _baseline_is_a_grid_point(self) -> Sweep:
        baseline = self.evaluation.baseline
        if baseline is None:
            return self
        for key, value, axis in (
            ("sampler", baseline.sampler, self.samplers),
            ("steps", baseline.num_inference_steps, self.num_inference_steps),
            ("guidance", baseline.guidance_scale, self.guidance_scale),
        ):
            if value not in axis:
                raise ValueError(f"evaluation.baseline.{key}: {value} is not one of the sweep's {key} {list(axis)}")
        return self

    @model_validator(mode="after")
    def _stage_overrides_name_real_stages(self) -> Sweep:
        for key, axis in (
            ("presets", "presets"),
            ("samplers", "samplers"),
            ("steps", "num_inference_steps"),
            ("guidance", "guidance_scale"),
        ):
            values = getattr(self, axis)
            if len(set(values)) != len(values):
                raise ValueError(f"{key}: values repeat: {list(values)}")
        folders = {}
        for value in self.guidance_scale:  # image folders are named steps<N>_guidance<G> with G as "{:g}"
            if f"{value:g}" in folders:
                raise ValueError(
                    f"guidance: {folders[f'{value:g}']} and {value} name the same image folder "
                    f"(guidance{value:g}); use values that differ in 6 significant digits"
                )
            folders[f"{value:g}"] = value
        for preset_name, overrides in self.stages.items():
            if preset_name not in self.presets:
                raise ValueError(f"stage overrides for {preset_name!r}, which is not in presets {list(self.presets)}")
            kinds = {spec.name: spec.kind for spec in PRESETS.get(preset_name).stages}
            for stage_name, override in overrides.items():
                if stage_name not in kinds:
                    raise ValueError(f"preset {preset_name!r} has no stage {stage_name!r}; stages: {list(kinds)}")
                if override.strength not in (None, 1.0) and kinds[stage_name] != "pixel-sr":
                    raise ValueError(
                        f"{preset_name}.{stage_name}: strength < 1 applies to pixel super-resolution stages only"
                    )
        return self


class ResolvedSweep(Frozen):
    """A sweep with its prompts read in: everything that determines its images."""

    sweep: Sweep
    prompt_texts: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        data = self.sweep.model_dump(mode="json")
        data["prompts"] = {"list": list(self.prompt_texts)}
        data["evaluation"] = without_unset_added_keys(data["evaluation"])
        data.pop("tracking")  # where results are logged does not change the run (nor its config hash)
        return data

    def config_hash(self) -> str:
        return content_hash(self.to_dict())


def content_hash(data: Any) -> str:
    """A stable short hash of JSON-like data: the same content gives the same hash on any machine."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _first_error_line(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    parts = [str(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: {'.'.join(parts)}: {message}" if parts else f"{source}: {message}"


def load_named_file(path: Path, model: type[BaseModel], what: str) -> Any:
    """A YAML file validated as ``model`` with its stem as ``name`` (claim and ablation files); one-line errors."""
    data = read_yaml(path, what)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a {what} must be a YAML mapping")
    try:
        return model.model_validate({**data, "name": path.stem})
    except ValidationError as error:
        raise UserError(_first_error_line(str(path), error)) from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a {what}") from None


def parse_sweep(data: Any, source: str = "sweep") -> Sweep:
    if not isinstance(data, dict):
        raise UserError(f"{source}: a sweep file must be a YAML mapping")
    try:
        return Sweep.model_validate(data)
    except ValidationError as error:
        raise UserError(_first_error_line(source, error)) from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be a sweep") from None


def resolve(sweep: Sweep, base_dir: Path, source: str = "sweep") -> ResolvedSweep:
    """Read the prompt set; an empty prompt set is an error."""
    spec = sweep.prompts
    if spec.coco is not None:
        spec = spec.model_copy(
            update={
                "coco": spec.coco.model_copy(
                    update={key: str((base_dir / getattr(spec.coco, key)).resolve()) for key in ("captions", "images")}
                )
            }
        )
        sweep = sweep.model_copy(update={"prompts": spec})
        sample = sample_coco(spec.coco.captions, spec.coco.images, spec.coco.count, spec.coco.seed)
        prompts = list(sample.prompts[: spec.limit])
        reference = sweep.evaluation.reference
        if reference is not None and reference.coco:  # the drawn real images, one per prompt, named in config.yaml
            files = tuple(str(path) for path in sample.files[: spec.limit])
            reference = reference.model_copy(update={"coco": None, "files": files})
            sweep = sweep.model_copy(
                update={"evaluation": sweep.evaluation.model_copy(update={"reference": reference})}
            )
    elif spec.set is not None:
        prompts = filtered_prompts(spec.set, spec.filters)
    elif spec.file is not None:
        path = Path(spec.file)
        prompts = read_prompt_file(path if path.is_absolute() else base_dir / path)
    else:
        prompts = [prompt.strip() for prompt in spec.list]
        if "" in prompts:
            raise UserError(
                f"{source}: prompts.list[{prompts.index('')}] is blank; remove it (every later prompt's index would shift)"
            )
    if spec.limit is not None:
        prompts = prompts[: spec.limit]
    if not prompts:
        raise UserError(f"{source}: prompts: the prompt set is empty")
    check_size(sweep, len(prompts), source)
    sweep = _absolute_model_paths(_absolute_reference(sweep, base_dir), base_dir)
    return ResolvedSweep(sweep=sweep, prompt_texts=tuple(prompts))


MAX_IMAGES_PER_POINT = 1_000_000  # 33 times COCO-30k
MAX_IMAGES = 10_000_000


def check_size(sweep: Sweep, n_prompts: int, source: str = "sweep") -> None:
    """Refuse, before the grid is built in memory, a sweep larger than any real one."""
    per_point = n_prompts * sweep.seeds_per_prompt
    if per_point > MAX_IMAGES_PER_POINT:
        raise UserError(
            f"{source}: {n_prompts:,} prompts x seeds_per_prompt {sweep.seeds_per_prompt:,} = {per_point:,} images "
            f"per grid point; the suite takes at most {MAX_IMAGES_PER_POINT:,}"
        )
    points = len(sweep.presets) * len(sweep.samplers) * len(sweep.num_inference_steps) * len(sweep.guidance_scale)
    if points * per_point > MAX_IMAGES:
        raise UserError(
            f"{source}: {points:,} grid points x {per_point:,} images = {points * per_point:,} images; "
            f"the suite takes at most {MAX_IMAGES:,} in one sweep (split it into several)"
        )


def _absolute_model_paths(sweep: Sweep, base_dir: Path) -> Sweep:
    """The metrics' local model paths given relative to the sweep file, made absolute (as reference folders are)."""
    return sweep.model_copy(update={"evaluation": sweep.evaluation.with_absolute_model_paths(base_dir)})


def _absolute_reference(sweep: Sweep, base_dir: Path) -> Sweep:
    """A reference folder or statistics file given relative to the sweep file, made absolute (as prompt files are
    read relative to it), so a run folder's config names the same files wherever it is evaluated from."""
    reference = sweep.evaluation.reference
    if reference is None:
        return sweep
    paths = {}
    for key in ("folder", "statistics"):
        value = getattr(reference, key)
        if value is not None and not Path(value).is_absolute():
            paths[key] = str((base_dir / value).resolve())
    if not paths:
        return sweep
    evaluation = sweep.evaluation.model_copy(update={"reference": reference.model_copy(update=paths)})
    return sweep.model_copy(update={"evaluation": evaluation})


def load_sweep(path: Path) -> ResolvedSweep:
    """Read, validate and resolve a sweep file; every problem is a one-line UserError."""
    data = read_yaml(path, "sweep file")
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if key != "config_hash"}  # a run's config.yaml is a sweep
    sweep = parse_sweep(data, str(path))
    return resolve(sweep, path.parent, str(path))
