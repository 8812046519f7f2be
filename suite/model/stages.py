"""A stage is one denoising loop at one resolution; every stage runs through ``run_stage``.

The same code runs Stable Diffusion's latent loop, IF's 64 px pixel base, IF's pixel x4
super-resolution and the Stable Diffusion x4 latent upscaler: they differ only in whether a
low-res image conditions the UNet (and is upsampled first) and whether a VAE decodes the result.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from torch._dynamo.utils import compilation_time_metrics

from suite.model.denoise import GuidedUNet, StepHook, TextMasks, denoise
from suite.model.samplers import make_scheduler, set_timesteps
from suite.model.timing import Clock, StepTimer

IMAGE_CHANNELS = 3


@dataclass(frozen=True)
class StageSettings:
    """The resolved knobs of one stage for one work item."""

    sampler: str
    num_inference_steps: int
    guidance_scale: float
    noise_level: int | None = None
    strength: float = 1.0  # < 1: start from the noised upsampled low-res image partway down (pixel SR only)


@dataclass
class LowResConditioning:
    """How a super-resolution stage sees the previous image: Imagen's noise augmentation.

    ``upsample``: pixel SR upsamples the low-res image to the stage's resolution (IF-II);
    latent SR keeps it at native size next to a same-size latent (SD x4 upscaler).
    ``noise_first``: draw the augmentation noise before the initial sample, as diffusers'
    x4 upscaler does (IF-II draws it after); this keeps seeds comparable with diffusers.
    """

    noising_scheduler: Any
    upsample: bool
    noise_first: bool = False


@dataclass
class Stage:
    """One denoising loop: a UNet, its training scheduler config, and how its output becomes pixels."""

    name: str
    unet: torch.nn.Module
    scheduler_config: Mapping[str, Any]
    text_encoder: str
    vae: torch.nn.Module | None = None
    conditioning: LowResConditioning | None = None
    transformer: bool = False  # the denoiser is a PixArt-style transformer: it reads the text mask and micro-conditions

    @property
    def reads_text_mask(self) -> bool:
        """Whether the pipeline hands this stage the prompts' attention masks (a transformer denoiser reads them)."""
        return self.transformer

    def parts(self) -> dict[str, torch.nn.Module]:
        """The stage's networks by the name the profile gives them, in the order they run."""
        return {"unet": self.unet} | ({"vae": self.vae} if self.vae is not None else {})

    def modules(self) -> Iterator[torch.nn.Module]:
        yield from self.parts().values()

    def run(self, settings: StageSettings, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, StageTiming]:
        """Denoise a batch (see ``run_stage``); every kind of stage offers this one call to the pipeline."""
        return run_stage(self, settings, *args, **kwargs)

    @property
    def sample_channels(self) -> int:
        in_channels = self.unet.config.in_channels
        return in_channels - IMAGE_CHANNELS if self.conditioning else in_channels

    def sample_size(self, low_res: torch.Tensor | None) -> tuple[int, int]:
        if self.conditioning is not None and not self.conditioning.upsample:
            return tuple(low_res.shape[-2:])
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def scale_factor(self) -> int:
        """Pixels per sample element along one side (8 for SD's VAE, 4 for the x4 upscaler's)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


@dataclass(frozen=True)
class StageTiming:
    """One stage's measured times for a batch: each loop iteration, and the VAE decode."""

    stage: str
    model_evaluations: int  # per image: what one run of the loop calls the model
    decode_seconds: float
    step_seconds: tuple[float, ...]
    decode_fp32_fallback: bool = False  # the half-precision decode was not finite and ran again in float32

    @property
    def loop_seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def step_median_s(self) -> float:
        return statistics.median(self.step_seconds) if self.step_seconds else float("nan")


def apply_speed_options(stage: Stage, compile: bool = False, channels_last: bool = False) -> None:
    """Channels-last memory layout for every network of the stage, and/or torch.compile of its denoisers (the UNet;
    unCLIP's last-step upsampler too).

    Neither changes the computation: images match eager, contiguous ones within float rounding.
    """
    if channels_last:
        for module in stage.modules():
            module.to(memory_format=torch.channels_last)
    if compile:
        for attribute in ("unet", "last_unet"):
            if getattr(stage, attribute, None) is not None:
                setattr(stage, attribute, torch.compile(getattr(stage, attribute), dynamic=False))


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far (torch._dynamo's outermost compile timer)."""

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """VAE-decode ``latents``; if a half-precision decode gives non-finite pixels, decode again in float32.

    Returns the image and whether the float32 fallback ran. The VAE is cast back afterwards
    (half -> float32 -> half is exact), so the next batch tries half precision again.
    """
    scaled = latents / vae.config.scaling_factor
    image = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
    if vae.dtype not in (torch.float16, torch.bfloat16) or torch.isfinite(image).all():
        return image, False
    half = vae.dtype
    try:
        with quiet_casts():
            vae.to(torch.float32)
        image = vae.decode(scaled.float(), return_dict=False)[0]
    finally:
        with quiet_casts():
            vae.to(half)
    return image, True


@contextlib.contextmanager
def quiet_casts():
    """Silence diffusers' advice on casting a model with ``.to(dtype)``: here the casts are deliberate."""

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def augment_low_res(
    conditioning: LowResConditioning,
    low_res: torch.Tensor,
    size: tuple[int, int],
    noise_level: int,
    generators: list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsample (pixel SR) and noise the low-res image to ``noise_level``; return it and the level labels."""
    image = low_res
    if conditioning.upsample:
        image = F.interpolate(image, size, mode="bilinear", align_corners=True)
    levels = torch.full((image.shape[0],), noise_level, dtype=torch.long, device=image.device)
    noise = randn_tensor(image.shape, generator=generators, device=image.device, dtype=image.dtype)
    return conditioning.noising_scheduler.add_noise(image, noise, levels), levels


def micro_conditions(
    stage: Stage, size: tuple[int, int], batch: int, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor | None]:
    """PixArt-alpha's resolution and aspect-ratio conditioning: given to models trained with it (the 1024 px
    checkpoints, ``use_additional_conditions``), ``None`` to the others, as PixArtAlphaPipeline decides."""
    if not getattr(stage.unet, "use_additional_conditions", False):
        return {"resolution": None, "aspect_ratio": None}
    height, width = (side * stage.scale_factor for side in size)
    resolution = torch.tensor([height, width]).repeat(batch, 1).to(dtype=dtype, device=device)
    aspect_ratio = torch.tensor([float(height / width)]).repeat(batch, 1).to(dtype=dtype, device=device)
    return {"resolution": resolution, "aspect_ratio": aspect_ratio}


def _truncated_start(
    stage: Stage, scheduler, begin: int, low_res: torch.Tensor | None, size: tuple[int, int], noise: torch.Tensor
) -> torch.Tensor:
    """The upsampled low-res image noised to the first timestep that runs (Imagen-style truncated SR start)."""
    if stage.conditioning is None or not stage.conditioning.upsample:
        raise ValueError(f"stage {stage.name!r}: strength < 1 needs a pixel super-resolution stage")
    upsampled = F.interpolate(low_res, size, mode="bilinear", align_corners=True)
    return scheduler.add_noise(upsampled, noise, scheduler.timesteps[begin : begin + 1])


def timed_denoise(
    denoiser,
    scheduler,
    sample: torch.Tensor,
    generators,
    name: str,
    clock: Clock,
    hooks: Sequence[StepHook],
    begin: int,
) -> tuple[torch.Tensor, tuple[float, ...]]:
    """The one loop (``denoise``) with a per-step timer: the denoised sample and each step's seconds."""
    timer = StepTimer(clock)
    timer.start()
    sample = denoise(denoiser, scheduler, sample, generators, name, [timer, *hooks], begin_index=begin)
    return sample, tuple(timer.step_seconds)


@torch.no_grad()
def run_stage(
    stage: Stage,
    settings: StageSettings,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    generators: list[torch.Generator],
    clock: Clock,
    low_res: torch.Tensor | None = None,
    hooks: Sequence[StepHook] = (),
    device: torch.device | None = None,
    masks: TextMasks | None = None,
) -> tuple[torch.Tensor, StageTiming]:
    """Denoise one stage for a batch (one generator per image); return images in [-1, 1] and timings.

    ``device`` is where the loop runs; by default the UNet's. With model offload the UNet waits on
    the CPU until its forward moves it, so the pipeline names the device. ``masks``: the text attention masks,
    for a transformer stage.
    """
    device, dtype = device or stage.unet.device, stage.unet.dtype
    scheduler = make_scheduler(settings.sampler, stage.scheduler_config)
    begin = set_timesteps(scheduler, settings.num_inference_steps, settings.strength, device=device)
    size = stage.sample_size(low_res)
    shape = (len(generators), stage.sample_channels, *size)

    conditioning_image = class_labels = None
    if stage.conditioning is not None:
        low_res = low_res.to(device=device, dtype=dtype)
        if stage.conditioning.noise_first:
            conditioning_image, class_labels = augment_low_res(
                stage.conditioning, low_res, size, settings.noise_level, generators
            )
        sample = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
        if not stage.conditioning.noise_first:
            conditioning_image, class_labels = augment_low_res(
                stage.conditioning, low_res, size, settings.noise_level, generators
            )
    else:
        sample = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    if settings.strength < 1.0:
        sample = _truncated_start(stage, scheduler, begin, low_res, size, sample)
    else:
        sample = sample * scheduler.init_noise_sigma

    denoiser = GuidedUNet(
        unet=stage.unet,
        prompt_embeds=prompt_embeds.to(device=device, dtype=dtype),
        negative_prompt_embeds=negative_prompt_embeds.to(device=device, dtype=dtype),
        guidance_scale=settings.guidance_scale,
        conditioning_image=conditioning_image,
        class_labels=class_labels,
        transformer=stage.transformer,
        masks=None if masks is None else TextMasks(masks.prompt.to(device), masks.negative.to(device)),
        added_cond_kwargs=micro_conditions(stage, size, len(generators), dtype, device) if stage.transformer else None,
    )
    sample, steps = timed_denoise(denoiser, scheduler, sample, generators, stage.name, clock, hooks, begin)

    decode_seconds, fallback = 0.0, False
    if stage.vae is not None:
        began = clock()
        sample, fallback = decode_latents(stage.vae, sample)
        decode_seconds = clock() - began
    return sample, StageTiming(stage.name, len(steps), decode_seconds, steps, decode_fp32_fallback=fallback)
