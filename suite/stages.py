"""A stage is one denoising loop at one resolution; every stage runs through ``run_stage``.

The same code runs Stable Diffusion's latent loop, IF's 64 px pixel base, IF's pixel x4
super-resolution and the Stable Diffusion x4 latent upscaler: they differ only in whether a
low-res image conditions the UNet (and is upsampled first) and whether a VAE decodes the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from suite.denoise import GuidedUNet, StepHook, denoise
from suite.samplers import make_scheduler, set_timesteps
from suite.timing import Clock, StepTimer

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
    stage: str
    loop_seconds: float
    step_seconds_median: float
    model_evaluations: int
    decode_seconds: float


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


def _truncated_start(
    stage: Stage, scheduler, begin: int, low_res: torch.Tensor | None, size: tuple[int, int], noise: torch.Tensor
) -> torch.Tensor:
    """The upsampled low-res image noised to the first timestep that runs (Imagen-style truncated SR start)."""
    if stage.conditioning is None or not stage.conditioning.upsample:
        raise ValueError(f"stage {stage.name!r}: strength < 1 needs a pixel super-resolution stage")
    upsampled = F.interpolate(low_res, size, mode="bilinear", align_corners=True)
    return scheduler.add_noise(upsampled, noise, scheduler.timesteps[begin : begin + 1])


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
) -> tuple[torch.Tensor, StageTiming]:
    """Denoise one stage for a batch (one generator per image); return images in [-1, 1] and timings.

    ``device`` is where the loop runs; by default the UNet's. With model offload the UNet waits on
    the CPU until its forward moves it, so the pipeline names the device.
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
    )
    timer = StepTimer(clock)
    timer.start()
    sample = denoise(denoiser, scheduler, sample, generators, stage.name, [timer, *hooks], begin_index=begin)

    decode_seconds = 0.0
    if stage.vae is not None:
        began = clock()
        vae = stage.vae
        sample = vae.decode(sample.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        decode_seconds = clock() - began
    timing = StageTiming(stage.name, timer.total, timer.median, len(timer.step_seconds), decode_seconds)
    return sample, timing
