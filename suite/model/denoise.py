"""One denoising loop for every stage, with classifier-free guidance written once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from suite.model.samplers import consumes_learned_variance, step_kwargs, takes_previous_timestep


@dataclass(frozen=True)
class StepEvent:
    """What a per-step hook sees after each scheduler step.

    ``predicted_x0`` is the model's prediction of the clean sample at this step (before any
    clipping or thresholding), in the sample's space: latents for latent stages, pixels for pixel
    stages. The same formula serves every solver (see ``predicted_x0``).
    """

    stage: str
    index: int
    timestep: torch.Tensor
    sample: torch.Tensor
    predicted_x0: torch.Tensor | None = None


def predicted_x0(
    scheduler: SchedulerMixin, model_input: torch.Tensor, output: torch.Tensor, timestep: torch.Tensor
) -> torch.Tensor:
    """The clean sample implied by the model's output at ``timestep``: x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t).

    ``model_input`` is the solver's scaled input, which is the variance-preserving x_t for every
    diffusers solver (Karras-style solvers divide their sample by sqrt(sigma^2 + 1) to make it),
    so one formula covers DDPM, DDIM, DPM-Solver, UniPC and Euler alike. v-prediction and
    sample-prediction models are converted by their own identities.
    """
    alphas = scheduler.alphas_cumprod.to(device=model_input.device, dtype=torch.float32)
    step = int(torch.as_tensor(timestep).float().round().clamp(0, len(alphas) - 1))
    alpha, sigma = alphas[step].sqrt(), (1 - alphas[step]).sqrt()
    x_t, prediction = model_input.float(), output.float()
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "v_prediction":
        return alpha * x_t - sigma * prediction
    if kind == "sample":
        return prediction
    return (x_t - sigma * prediction) / alpha


@dataclass
class KeepPredictions:
    """A step hook that keeps every step's x0 prediction (on the CPU), per stage: for decoding and scoring."""

    predictions: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    wants_x0 = True  # tells the loop to compute predicted_x0 (it costs a device sync per step)

    def __call__(self, event: StepEvent) -> None:
        self.predictions.setdefault(event.stage, []).append(event.predicted_x0.detach().cpu())


StepHook = Callable[[StepEvent], None]


class Denoiser(Protocol):
    """A model called on a (scaled) noisy sample at timestep t; returns the model output."""

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor: ...


def classifier_free_guidance(output: torch.Tensor, guidance_scale: float, sample_channels: int) -> torch.Tensor:
    """Guide a [uncond; cond] batch of model outputs (Ho & Salimans 2022).

    ``eps = uncond + scale * (cond - uncond)``. Channels past ``sample_channels`` are a learned
    variance (IF's learned_range); they are taken from the conditional half, as IF does.
    """
    output_uncond, output_cond = output.chunk(2)
    eps_uncond = output_uncond[:, :sample_channels]
    eps_cond, variance = output_cond[:, :sample_channels], output_cond[:, sample_channels:]
    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    return torch.cat([eps, variance], dim=1)


def uses_guidance(guidance_scale: float) -> bool:
    """Whether a guidance scale needs the unconditional pass: at 1 the guidance formula is the conditional output."""
    return guidance_scale != 1.0


@dataclass
class TextMasks:
    """Attention masks of the prompts and of the negative prompt, for a denoiser that masks padding tokens."""

    prompt: torch.Tensor
    negative: torch.Tensor


@dataclass
class GuidedUNet:
    """Wraps a diffusers denoiser with the prompt, optional low-res conditioning and guidance.

    The denoiser is a UNet (``transformer=False``: called as ``unet(x, t, encoder_hidden_states, class_labels)``,
    plus ``attention_mask`` when ``masks`` are given, as unCLIP's decoder reads its text mask)
    or a PixArt-style transformer (called as PixArtAlphaPipeline calls it: the timestep broadcast to the batch,
    the text attention mask, and ``added_cond_kwargs`` with resolution and aspect ratio where the model takes
    them). With ``guidance_scale == 1`` the unconditional pass is skipped: the formula reduces to the
    conditional output, so this is the same math at half the cost.
    """

    unet: torch.nn.Module
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    guidance_scale: float
    conditioning_image: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None
    transformer: bool = False
    masks: TextMasks | None = None
    added_cond_kwargs: dict[str, torch.Tensor | None] | None = None
    negative_class_labels: torch.Tensor | None = None  # unCLIP's decoder: the unconditional half's own time embedding

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        model_input = sample
        if self.conditioning_image is not None:
            model_input = torch.cat([model_input, self.conditioning_image], dim=1)
        embeds, labels = self.prompt_embeds, self.class_labels
        mask = None if self.masks is None else self.masks.prompt
        added = dict(self.added_cond_kwargs or {})
        if uses_guidance(self.guidance_scale):
            model_input = torch.cat([model_input] * 2)
            embeds = torch.cat([self.negative_prompt_embeds, self.prompt_embeds])
            if labels is not None:
                negative = labels if self.negative_class_labels is None else self.negative_class_labels
                labels = torch.cat([negative, labels])
            mask = None if mask is None else torch.cat([self.masks.negative, mask])
            added = {key: None if value is None else torch.cat([value] * 2) for key, value in added.items()}
        if self.transformer:
            timesteps = torch.as_tensor(timestep, device=model_input.device).reshape(-1)[:1]
            output = self.unet(
                model_input,
                encoder_hidden_states=embeds,
                encoder_attention_mask=mask,
                timestep=timesteps.expand(model_input.shape[0]),
                added_cond_kwargs=added,
                return_dict=False,
            )[0]
        else:
            masked = {} if mask is None else {"attention_mask": mask}
            output = self.unet(
                model_input, timestep, encoder_hidden_states=embeds, class_labels=labels, return_dict=False, **masked
            )[0]
        if uses_guidance(self.guidance_scale):
            output = classifier_free_guidance(output, self.guidance_scale, sample.shape[1])
        return output


def denoise(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    sample: torch.Tensor,
    generators: list[torch.Generator],
    stage: str = "",
    hooks: Sequence[StepHook] = (),
    begin_index: int = 0,
) -> torch.Tensor:
    """Run the scheduler's reverse process from ``sample`` (already scaled by init_noise_sigma).

    The scheduler must have had ``set_timesteps`` called; the loop runs its timesteps from
    ``begin_index`` on (0 unless the stage starts partway, see ``samplers.set_timesteps``). Works for every diffusers scheduler:
    first- and second-order, deterministic and ancestral, learned or fixed variance.
    """
    extra = step_kwargs(scheduler, generators)
    wants_x0 = any(getattr(hook, "wants_x0", False) for hook in hooks)
    keep_variance = consumes_learned_variance(scheduler)
    previous = takes_previous_timestep(scheduler)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin_index)
    timesteps = scheduler.timesteps[begin_index:]
    for index, timestep in enumerate(timesteps):
        if previous:  # unCLIP's scheduler steps to the next timestep it is given (None after the last: t - 1)
            extra["prev_timestep"] = timesteps[index + 1] if index + 1 < len(timesteps) else None
        # 1. Precondition the input (sigma scaling for Karras-style solvers; identity for DDPM/DDIM).
        model_input = scheduler.scale_model_input(sample, timestep)
        # 2. Predict (guided) noise; drop a learned variance the solver cannot use.
        output = denoiser(model_input, timestep)
        if not keep_variance:
            output = output[:, : sample.shape[1]]
        x0 = predicted_x0(scheduler, model_input, output[:, : sample.shape[1]], timestep) if wants_x0 else None
        # 3. Take the solver's step to the next noise level.
        sample = scheduler.step(output, timestep, sample, **extra, return_dict=False)[0]
        for hook in hooks:
            hook(StepEvent(stage, index, timestep, sample, x0))
    return sample
