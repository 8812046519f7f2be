"""Presets: named sets of checkpoints for a backend, on the hub or in a local folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from suite.core.errors import UserError
from suite.core.registry import Registry
from suite.model import tiny
from suite.model.sources import ReferenceConfigs, Source, cache_root


@dataclass(frozen=True)
class StageSpec:
    """One stage of a preset: which kind of loop, from which source, and its default knobs."""

    name: str
    kind: str  # "latent", "latent-dit", "pixel-base", "pixel-sr", "latent-sr", "prior", "unclip-decoder", "unclip-sr"
    source: str  # key into Preset.sources
    guidance_scale: float | None = None  # None: the sweep's guidance value
    num_inference_steps: int | None = None  # None: the sweep's steps (unCLIP's upsamplers run a fixed 7)
    noise_level: int | None = None  # super-resolution stages only
    strength: float = 1.0  # pixel super-resolution only: < 1 starts from the noised upsampled image
    text_source: str | None = None  # a source whose text_encoder/ this stage reads (default: the backend's choice)


@dataclass(frozen=True)
class Preset:
    """A named, loadable configuration of one backend.

    ``sources`` maps keys to hub repositories or local folders. ``local_dir`` replaces them: a
    single-source preset reads the folder itself, a multi-source preset reads ``local_dir/<key>``.
    ``build`` makes built-in presets: it writes the folders with ``save_pretrained``.
    """

    name: str
    backend: str
    stages: tuple[StageSpec, ...]
    sources: Mapping[str, Source | ReferenceConfigs | Path] = field(default_factory=dict)
    denoiser_dtype: str = "fp16"  # on accelerators; CPU runs in fp32
    text_encoder_dtype: str = "fp16"
    offload: str = "none"  # "none": everything resident; "model": each model moved to the device while used
    description: str = ""
    local_dir: Path | None = None
    build: Callable[[Path], None] | None = None
    reference_configs: Mapping[str, ReferenceConfigs] = field(default_factory=dict)  # source key -> public configs
    bench_sampler: str = "ddim"  # what `suite bench` runs unless told: one diffusers' own pipeline also takes

    def source_paths(self) -> dict[str, Path | Source | ReferenceConfigs]:
        """Each source key mapped to a local folder (if one is set) or its hub location."""
        if self.local_dir is None:
            return dict(self.sources)
        keys = list(self.sources) or [stage.source for stage in self.stages]
        if len(set(keys)) == 1:
            return {keys[0]: self.local_dir}
        return {key: self.local_dir / key for key in dict.fromkeys(keys)}

    def without_weights(self) -> Preset:
        """This preset with configs readable without weights: its local folder, else the public configs."""
        if self.local_dir is not None or all(isinstance(source, Path) for source in self.sources.values()):
            return self
        if not self.reference_configs:
            raise UserError(
                f"preset {self.name!r}: its architecture configs are not public; "
                f"point it at a local copy with --model-dir {self.name}=PATH"
            )
        return replace(self, sources=dict(self.reference_configs))


PRESETS: Registry[Preset] = Registry("preset")

_IF_SR_DEFAULTS = {"guidance_scale": 4.0, "noise_level": 250}  # IF-II defaults in diffusers
_X4_DEFAULTS = {"guidance_scale": 9.0, "noise_level": 100}  # SD x4 upscaler defaults in diffusers
_X4 = Source("stabilityai/stable-diffusion-x4-upscaler", "a44206cef52cdd20c6a32fea6257860474f0be43")
_X4_CONFIGS = ReferenceConfigs(
    {
        part: f"x4-upscaler-{part.replace('_', '-')}.json"
        for part in ("text_encoder", "unet", "vae", "scheduler", "low_res_scheduler")
    }
)
# Public configs of the IF stages; IF-I-L/M and IF-II-M are not public, so those presets have none.
_IF_CONFIGS = {
    "IF-I-XL-v1.0": ReferenceConfigs(
        {"text_encoder": "t5-v1_1-xxl-encoder.json", "unet": "if-i-xl-unet.json", "scheduler": "if-i-scheduler.json"}
    ),
    "IF-II-L-v1.0": ReferenceConfigs(
        {
            "unet": "if-ii-l-unet.json",
            "scheduler": "if-ii-scheduler.json",
            "image_noising_scheduler": "if-ii-image-noising-scheduler.json",
        }
    ),
}


def _stable_diffusion(name: str, repo_id: str, description: str) -> Preset:
    configs = ReferenceConfigs(
        {part: f"{name}-{part.replace('_', '-')}.json" for part in ("text_encoder", "unet", "vae", "scheduler")}
    )
    return Preset(
        name=name,
        backend="latent",
        stages=(StageSpec("latent", "latent", name),),
        sources={name: Source(repo_id)},
        description=description,
        reference_configs={name: configs},
    )


PRESETS.register(
    "sd15",
    _stable_diffusion(
        "sd15",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "Stable Diffusion 1.5: CLIP ViT-L/14 text, 860M UNet on 64x64x4 latents, VAE f=8 to 512 px",
    ),
)
PRESETS.register(
    "sd21-base",
    _stable_diffusion(
        "sd21-base",
        "stabilityai/stable-diffusion-2-1-base",
        "Stable Diffusion 2.1-base: OpenCLIP ViT-H text, 865M UNet, 512 px",
    ),
)


def _deepfloyd(name: str, stage_1: str, stage_2: str, description: str) -> Preset:
    return Preset(
        name=name,
        backend="cascaded",
        stages=(
            StageSpec("base", "pixel-base", "stage_1"),
            StageSpec("super_resolution_1", "pixel-sr", "stage_2", **_IF_SR_DEFAULTS),
            StageSpec("super_resolution_2", "latent-sr", "stage_3", **_X4_DEFAULTS),
        ),
        sources={
            "stage_1": Source(f"DeepFloyd/{stage_1}", variant="fp16"),
            "stage_2": Source(f"DeepFloyd/{stage_2}", variant="fp16"),
            "stage_3": _X4,
        },
        text_encoder_dtype="bf16",
        offload="model",
        description=description,
        reference_configs=_if_reference_configs(stage_1, stage_2),
    )


def _if_reference_configs(stage_1: str, stage_2: str) -> dict[str, ReferenceConfigs]:
    if stage_1 not in _IF_CONFIGS or stage_2 not in _IF_CONFIGS:
        return {}
    return {"stage_1": _IF_CONFIGS[stage_1], "stage_2": _IF_CONFIGS[stage_2], "stage_3": _X4_CONFIGS}


PRESETS.register(
    "if-xl",
    _deepfloyd(
        "if-xl",
        "IF-I-XL-v1.0",
        "IF-II-L-v1.0",
        "DeepFloyd IF: T5-XXL, IF-I-XL 64 px, IF-II-L x4 to 256, SD x4 upscaler to 1024",
    ),
)
PRESETS.register(
    "if-l",
    _deepfloyd(
        "if-l", "IF-I-L-v1.0", "IF-II-L-v1.0", "DeepFloyd IF: T5-XXL, IF-I-L 64 px, IF-II-L to 256, x4 upscaler to 1024"
    ),
)
PRESETS.register(
    "if-m",
    _deepfloyd(
        "if-m", "IF-I-M-v1.0", "IF-II-M-v1.0", "DeepFloyd IF: T5-XXL, IF-I-M 64 px, IF-II-M to 256, x4 upscaler to 1024"
    ),
)


def _pixart(name: str, repo_id: str, side: int, description: str) -> Preset:
    """PixArt-alpha: T5-XXL (120 tokens) -> PixArt-XL/2 diffusion transformer on latents -> SD's VAE."""
    configs = ReferenceConfigs(
        {
            "transformer": f"pixart-xl-2-{side}-transformer.json",
            "text_encoder": "t5-v1_1-xxl-encoder.json",
            "vae": "sd15-vae.json",
            "scheduler": "pixart-scheduler.json",
        }
    )
    return Preset(
        name=name,
        backend="latent",
        stages=(StageSpec("latent", "latent-dit", name),),
        sources={name: Source(repo_id)},  # default branch: no revision could be read offline to pin
        description=description,
        reference_configs={name: configs},
    )


PRESETS.register(
    "pixart-512",
    _pixart(
        "pixart-512",
        "PixArt-alpha/PixArt-XL-2-512x512",
        512,
        "PixArt-alpha: T5-XXL text (120 tokens), PixArt-XL/2 transformer (0.6B) on 64x64x4 latents, SD's VAE to 512 px",
    ),
)
PRESETS.register(
    "pixart-1024",
    _pixart(
        "pixart-1024",
        "PixArt-alpha/PixArt-XL-2-1024-MS",
        1024,
        "PixArt-alpha 1024-MS: as pixart-512 on 128x128x4 latents with resolution and aspect-ratio conditions",
    ),
)


# unCLIP's stage defaults, as UnCLIPPipeline's: prior guidance 4, decoder guidance from the grid (Karlo uses 8),
# upsamplers unguided for 7 steps (six with super_res_first, the last with super_res_last).
_UNCLIP_STAGES = (
    StageSpec("prior", "prior", "model", guidance_scale=4.0),
    StageSpec("decoder", "unclip-decoder", "model"),
    StageSpec("super_resolution", "unclip-sr", "model", guidance_scale=1.0, num_inference_steps=7),
)
_KARLO_CONFIGS = ReferenceConfigs(
    {
        "text_encoder": "clip-vit-large-patch14-text.json",
        **{part: f"karlo-{part.replace('_', '-')}.json" for part in ("prior", "decoder", "text_proj")},
        **{part: f"karlo-{part.replace('_', '-')}.json" for part in ("super_res_first", "super_res_last")},
        **{
            f"{stage}_scheduler": f"karlo-{stage.replace('_', '-')}-scheduler.json"
            for stage in ("prior", "decoder", "super_res")
        },
    }
)
PRESETS.register(
    "karlo",
    Preset(
        name="karlo",
        backend="unclip",
        stages=_UNCLIP_STAGES,
        sources={"model": Source("kakaobrain/karlo-v1-alpha")},  # default branch: no revision could be read offline
        description="Karlo (unCLIP, DALL-E 2's design): CLIP ViT-L/14 text, 1B prior to a CLIP image embedding, "
        "64 px pixel decoder, x4 upsamplers to 256 px",
        reference_configs={"model": _KARLO_CONFIGS},
        bench_sampler="unclip",  # UnCLIPPipeline steps only UnCLIPScheduler
    ),
)


def _made_here(name: str, backend: str, stages: tuple[StageSpec, ...], description: str, **where: Any) -> Preset:
    """A preset whose models this project makes (built from configs, or trained on the toy world): fp32, and one
    built-in folder per stage source unless ``where`` names its sources, folder or builder."""
    sources = where.pop("sources", {spec.source: Source("built-in") for spec in stages})
    return Preset(
        name=name,
        backend=backend,
        stages=stages,
        sources=sources,
        denoiser_dtype="fp32",
        text_encoder_dtype="fp32",
        description=description,
        **where,
    )


PRESETS.register(
    "tiny-latent",
    _made_here(
        "tiny-latent",
        "latent",
        (StageSpec("latent", "latent", "model"),),
        "untrained SD-shaped model built from configs (64 px, VAE f=8): exercises the machinery",
        build=tiny.build_latent,
    ),
)
PRESETS.register(
    "tiny-cascaded",
    _made_here(
        "tiny-cascaded",
        "cascaded",
        (
            StageSpec("base", "pixel-base", "stage_1"),
            StageSpec("super_resolution_1", "pixel-sr", "stage_2", **_IF_SR_DEFAULTS),
        ),
        "untrained IF-shaped cascade built from configs (T5, 16 px base, x4 SR to 64 px)",
        build=tiny.build_cascade,
    ),
)

PRESETS.register(
    "tiny-pixart",
    _made_here(
        "tiny-pixart",
        "latent",
        (StageSpec("latent", "latent-dit", "model"),),
        "untrained PixArt-alpha-shaped model built from configs (T5, diffusion transformer on 8x8x4 latents, 64 px)",
        build=tiny.build_pixart,
    ),
)

PRESETS.register(
    "tiny-unclip",
    _made_here(
        "tiny-unclip",
        "unclip",
        _UNCLIP_STAGES,
        "untrained Karlo-shaped unCLIP built from configs (CLIP, prior, 16 px decoder, x4 upsamplers to 64 px)",
        build=tiny.build_unclip,
        bench_sampler="unclip",
    ),
)

# The toy world's trained models ship inside the package; `suite train toy` writes them here.
TOY_WEIGHTS = Path(__file__).parents[1] / "toy" / "weights"


def _toy_weights(name: str) -> Path:
    return TOY_WEIGHTS / name


# The toy world's models, trained by `suite train toy` and shipped inside the package.
# Truncated start: the short-trained SR stage denoises from its noised upsampled input halfway
# down the schedule (from pure noise it leaves specks and tinted backgrounds).
_TOY_SUPER_RESOLUTION = StageSpec(
    "super_resolution_1", "pixel-sr", "stage_2", guidance_scale=1.0, noise_level=250, strength=0.5
)
PRESETS.register(
    "toy-latent",
    _made_here(
        "toy-latent",
        "latent",
        (StageSpec("latent", "latent", "model"),),
        "toy world, SD-style: CLIP-style text encoder, UNet on 8x8x4 latents, VAE f=8 to 64 px",
        local_dir=_toy_weights("toy-latent"),
    ),
)
PRESETS.register(
    "toy-cascaded",
    _made_here(
        "toy-cascaded",
        "cascaded",
        (StageSpec("base", "pixel-base", "stage_1"), _TOY_SUPER_RESOLUTION),
        "toy world, IF-style: T5-style encoder, 16 px pixel base, x4 pixel super-resolution to 64 px",
        local_dir=_toy_weights("toy-cascaded"),
    ),
)

PRESETS.register(
    "toy-unclip",
    _made_here(
        "toy-unclip",
        "unclip",
        (
            StageSpec("prior", "prior", "model", guidance_scale=4.0),
            StageSpec("decoder", "unclip-decoder", "model"),
            replace(_TOY_SUPER_RESOLUTION, text_source="sr_text"),
        ),
        "toy world, unCLIP-style (DALL-E 2): the toy CLIP's text tower, prior to a toy-CLIP image embedding, "
        "16 px pixel decoder, toy-cascaded's x4 SR to 64 px",
        sources={
            "model": _toy_weights("toy-unclip"),
            "stage_2": _toy_weights("toy-cascaded") / "stage_2",
            "sr_text": _toy_weights("toy-cascaded") / "stage_1",
        },
        bench_sampler="unclip",
    ),
)

# The 2x2 ablation {latent, pixel} x {CLIP-style, T5-style}, trained by `suite train toy --ablation`
# to one budget. The latent cells share toy-latent's VAE; the pixel cells share toy-cascaded's x4 SR
# stage, which reads the T5-style encoder it was trained with (so both pixel cells upsample alike).
_ABLATION_TEXT = {"clip": "CLIP-style (causal, no mask)", "t5": "T5-style (relative positions, mask)"}


def _ablation_preset(space: str, text: str, run: str = "") -> Preset:
    """A cell's preset; ``run`` names another training run of it ("seed7", or "seed7-step2783" for a snapshot)."""
    cell = f"{space}-{text}" + (f"-{run}" if run else "")
    folder = _toy_weights("ablation") / cell
    if space == "latent":
        stages = (StageSpec("latent", "latent", "model"),)
        sources = {"model": folder, "vae": _toy_weights("toy-latent")}
        what = "SD-style UNet on 8x8x4 latents, toy-latent's VAE"
    else:
        stages = (StageSpec("base", "pixel-base", "stage_1"), replace(_TOY_SUPER_RESOLUTION, text_source="sr_text"))
        sources = {
            "stage_1": folder,
            "stage_2": _toy_weights("toy-cascaded") / "stage_2",
            "sr_text": _toy_weights("toy-cascaded") / "stage_1",
        }
        what = "IF-style 16 px pixel base, toy-cascaded's x4 SR"
    backend = "latent" if space == "latent" else "cascaded"
    description = f"toy 2x2 ablation cell: {_ABLATION_TEXT[text]} encoder, {what}" + (
        f" (training run {run})" if run else ""
    )
    return _made_here(f"toy-{cell}", backend, stages, description, sources=sources)


# Each cell's three training runs (seed 6 is the cell's own preset; `suite train toy --ablation --seeds 3`), and
# the seed-7 pixel runs' snapshots at the step where they had spent their latent twin's training FLOPs
# (suite.toy.recipes.COMPUTE_MATCHED_STEPS; a test checks the two agree).
ABLATION_REPLICATE_SEEDS = (7, 8)
ABLATION_MATCHED_RUNS = {"pixel-clip": "seed7-step2783", "pixel-t5": "seed7-step2860"}
for _space in ("latent", "pixel"):
    for _text in ("clip", "t5"):
        PRESETS.register(f"toy-{_space}-{_text}", _ablation_preset(_space, _text))
        for _seed in ABLATION_REPLICATE_SEEDS:
            PRESETS.register(f"toy-{_space}-{_text}-seed{_seed}", _ablation_preset(_space, _text, f"seed{_seed}"))
for _cell, _run in ABLATION_MATCHED_RUNS.items():
    _space, _text = _cell.split("-")
    PRESETS.register(f"toy-{_cell}-{_run}", _ablation_preset(_space, _text, _run))


def materialise(preset: Preset) -> Preset:
    """For a built-in preset without a local folder, build it once into the cache and point at it."""
    if preset.build is None or preset.local_dir is not None:
        return preset
    folder = cache_root() / "presets" / preset.name
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{preset.name}-", dir=folder.parent))
        try:
            preset.build(staging)
            staging.rename(folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not folder.is_dir():
                raise
    return replace(preset, local_dir=folder)
