"""unCLIP's stages (DALL-E 2; its open reproduction Karlo, diffusers' ``UnCLIPPipeline``), run through the one loop.

unCLIP is a pixel cascade conditioned on CLIP. Its three kinds of stage:

- the **prior** (``PriorStage``) denoises a CLIP *image embedding*, not an image: a ``PriorTransformer`` reads
  CLIP's projected text embedding, its per-token states and their mask, and predicts the clean embedding
  (``prediction_type: sample``), guided by classifier-free guidance like every stage;
- the **decoder** (``DecoderStage``) is a 64 px pixel UNet whose conditioning is made from that image embedding by
  ``UnCLIPTextProjModel``: four extra context tokens before the projected text states, and a vector added to the
  time embedding. Its unconditional half uses a learned "no image" embedding, so the two halves differ in their
  time embedding too (``GuidedUNet.negative_class_labels``);
- the **upsamplers** (``SuperResolutionStage``) take the bicubic-upsampled decoder image and no text, and so no
  guidance; one network runs every step but the last, a second one the last step.

All three call ``denoise`` with a ``Denoiser``; only what the network is called with differs. Where the math
differs from the other families: the prior's sample is a vector, not an image (nothing decodes it; diffusers' prior
post-processing un-normalises it), the decoder's output is clamped to [-1, 1] as diffusers does, and the
upsamplers are not noise-augmented.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from suite.model.denoise import GuidedUNet, StepHook, TextMasks, classifier_free_guidance, uses_guidance
from suite.model.samplers import make_scheduler, set_timesteps
from suite.model.stages import StageSettings, StageTiming, timed_denoise
from suite.model.timing import Clock


@dataclass
class GuidedPrior:
    """unCLIP's prior as a ``Denoiser``: the noisy image embedding in, the (guided) clean-embedding prediction out."""

    prior: torch.nn.Module
    text: tuple[torch.Tensor, torch.Tensor]  # per-token states, projected pooled embedding
    negative_text: tuple[torch.Tensor, torch.Tensor]
    masks: TextMasks
    guidance_scale: float

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        (states, pooled), mask, model_input = self.text, self.masks.prompt, sample
        if uses_guidance(self.guidance_scale):
            model_input = torch.cat([sample] * 2)
            states = torch.cat([self.negative_text[0], states])
            pooled = torch.cat([self.negative_text[1], pooled])
            mask = torch.cat([self.masks.negative, mask])
        output = self.prior(
            model_input,
            timestep=timestep,
            proj_embedding=pooled,
            encoder_hidden_states=states,
            attention_mask=mask,
            return_dict=False,
        )[0]
        if uses_guidance(self.guidance_scale):
            output = classifier_free_guidance(output, self.guidance_scale, sample.shape[1])
        return output


@dataclass
class SwitchingUpsampler:
    """unCLIP's upsampler as a ``Denoiser``: the low-res image beside the sample, ``first`` for every model
    evaluation but the last, ``last`` for the last (as ``UnCLIPPipeline`` does)."""

    first: torch.nn.Module
    last: torch.nn.Module
    upscaled: torch.Tensor
    evaluations: int
    calls: int = field(default=0)

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        network = self.last if self.calls == self.evaluations else self.first
        return network(torch.cat([sample, self.upscaled], dim=1), timestep, return_dict=False)[0]


def _start(scheduler, settings: StageSettings, shape: Sequence[int], generators, device, dtype) -> tuple:
    if settings.strength < 1.0:
        raise ValueError("unCLIP's stages start from noise: strength < 1 applies to pixel super-resolution stages only")
    begin = set_timesteps(scheduler, settings.num_inference_steps, settings.strength, device=device)
    sample = randn_tensor(tuple(shape), generator=generators, device=device, dtype=dtype)
    return begin, sample * scheduler.init_noise_sigma


def _masks(masks: TextMasks, device: torch.device) -> TextMasks:
    return TextMasks(masks.prompt.to(device).bool(), masks.negative.to(device).bool())


def _pad_front(mask: torch.Tensor, tokens: int) -> torch.Tensor:
    """The mask with ``tokens`` real tokens in front (text_proj's extra context); MPS cannot pad bool tensors, so
    there it is padded as int, as diffusers does."""
    if mask.device.type == "mps":
        return F.pad(mask.int(), (tokens, 0), value=1).bool()
    return F.pad(mask, (tokens, 0), value=True)


@dataclass
class PriorStage:
    """Text -> CLIP image embedding. ``unet`` is the ``PriorTransformer`` (the name every stage's denoiser has)."""

    name: str
    unet: torch.nn.Module
    scheduler_config: Mapping[str, Any]
    text_encoder: str
    vae: None = None
    conditioning: None = None
    transformer: bool = False
    reads_text_mask = True
    denoises_image = False  # it makes an embedding; the decoder lays out the image

    def parts(self) -> dict[str, torch.nn.Module]:
        return {"prior": self.unet}

    def modules(self) -> Iterator[torch.nn.Module]:
        yield from self.parts().values()

    @torch.no_grad()
    def run(
        self,
        settings: StageSettings,
        prompt_embeds: tuple[torch.Tensor, torch.Tensor],
        negative_prompt_embeds: tuple[torch.Tensor, torch.Tensor],
        generators: list[torch.Generator],
        clock: Clock,
        low_res: torch.Tensor | None = None,
        hooks: Sequence[StepHook] = (),
        device: torch.device | None = None,
        masks: TextMasks | None = None,
    ) -> tuple[torch.Tensor, StageTiming]:
        """Image embeddings (batch, embedding_dim) for the prompts, un-normalised by the prior's CLIP statistics."""
        device, dtype = device or self.unet.device, self.unet.dtype
        scheduler = make_scheduler(settings.sampler, self.scheduler_config)
        shape = (len(generators), self.unet.config.embedding_dim)
        begin, sample = _start(scheduler, settings, shape, generators, device, dtype)
        denoiser = GuidedPrior(
            self.unet,
            tuple(part.to(device=device, dtype=dtype) for part in prompt_embeds),
            tuple(part.to(device=device, dtype=dtype) for part in negative_prompt_embeds),
            _masks(masks, device),
            settings.guidance_scale,
        )
        sample, steps = timed_denoise(denoiser, scheduler, sample, generators, self.name, clock, hooks, begin)
        embedding = self.unet.post_process_latents(sample)
        return embedding, StageTiming(self.name, len(steps), 0.0, steps)


@dataclass
class DecoderStage:
    """CLIP image embedding (+ text) -> a 64 px image: a pixel UNet conditioned through ``text_proj``."""

    name: str
    unet: torch.nn.Module
    text_proj: torch.nn.Module
    scheduler_config: Mapping[str, Any]
    text_encoder: str
    vae: None = None
    conditioning: None = None
    transformer: bool = False
    reads_text_mask = True

    @property
    def text_token_offset(self) -> int:
        """Where the prompt's tokens start in the decoder's context: after text_proj's extra CLIP tokens."""
        return self.text_proj.config.clip_extra_context_tokens

    def parts(self) -> dict[str, torch.nn.Module]:
        return {"text_proj": self.text_proj, "unet": self.unet}

    def modules(self) -> Iterator[torch.nn.Module]:
        yield from self.parts().values()

    def conditions(
        self,
        image_embeddings: torch.Tensor,
        text: tuple[torch.Tensor, torch.Tensor],
        negative_text: tuple[torch.Tensor, torch.Tensor],
        masks: TextMasks,
        guided: bool,
    ) -> dict[str, Any]:
        """``GuidedUNet`` arguments: text_proj's context tokens and time embeddings, and the padded masks.

        With guidance, text_proj sees the learned "no image" embedding beside the prior's, as diffusers calls it.
        """
        states, pooled = text
        if guided:
            states = torch.cat([negative_text[0], states])
            pooled = torch.cat([negative_text[1], pooled])
        context, time_embeddings = self.text_proj(
            image_embeddings=image_embeddings,
            prompt_embeds=pooled,
            text_encoder_hidden_states=states,
            do_classifier_free_guidance=guided,
        )
        extra = self.text_proj.config.clip_extra_context_tokens
        padded = TextMasks(_pad_front(masks.prompt, extra), _pad_front(masks.negative, extra))
        if not guided:
            return {
                "prompt_embeds": context,
                "negative_prompt_embeds": context,
                "class_labels": time_embeddings,
                "masks": padded,
            }
        negative_context, context = context.chunk(2)
        negative_time, time_embeddings = time_embeddings.chunk(2)
        return {
            "prompt_embeds": context,
            "negative_prompt_embeds": negative_context,
            "class_labels": time_embeddings,
            "negative_class_labels": negative_time,
            "masks": padded,
        }

    @torch.no_grad()
    def run(
        self,
        settings: StageSettings,
        prompt_embeds: tuple[torch.Tensor, torch.Tensor],
        negative_prompt_embeds: tuple[torch.Tensor, torch.Tensor],
        generators: list[torch.Generator],
        clock: Clock,
        low_res: torch.Tensor | None = None,
        hooks: Sequence[StepHook] = (),
        device: torch.device | None = None,
        masks: TextMasks | None = None,
    ) -> tuple[torch.Tensor, StageTiming]:
        """Images in [-1, 1] from the prior's image embeddings (``low_res``: what the previous stage gave)."""
        device, dtype = device or self.unet.device, self.unet.dtype
        text = tuple(part.to(device=device, dtype=dtype) for part in prompt_embeds)
        negative_text = tuple(part.to(device=device, dtype=dtype) for part in negative_prompt_embeds)
        guided = uses_guidance(settings.guidance_scale)
        conditions = self.conditions(
            low_res.to(device=device, dtype=dtype), text, negative_text, _masks(masks, device), guided
        )
        scheduler = make_scheduler(settings.sampler, self.scheduler_config)
        size = self.unet.config.sample_size
        shape = (len(generators), self.unet.config.in_channels, size, size)
        begin, sample = _start(scheduler, settings, shape, generators, device, dtype)
        denoiser = GuidedUNet(unet=self.unet, guidance_scale=settings.guidance_scale, **conditions)
        sample, steps = timed_denoise(denoiser, scheduler, sample, generators, self.name, clock, hooks, begin)
        return sample.clamp(-1, 1), StageTiming(self.name, len(steps), 0.0, steps)


@dataclass
class SuperResolutionStage:
    """unCLIP's upsampler: the bicubic-upsampled image beside the sample, no text; a second network for the last step."""

    name: str
    unet: torch.nn.Module
    last_unet: torch.nn.Module
    scheduler_config: Mapping[str, Any]
    text_encoder: str
    vae: None = None
    conditioning: None = None
    transformer: bool = False
    reads_text_mask = False

    def parts(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "last_unet": self.last_unet}

    def modules(self) -> Iterator[torch.nn.Module]:
        yield from self.parts().values()

    @torch.no_grad()
    def run(
        self,
        settings: StageSettings,
        prompt_embeds: Any,
        negative_prompt_embeds: Any,
        generators: list[torch.Generator],
        clock: Clock,
        low_res: torch.Tensor | None = None,
        hooks: Sequence[StepHook] = (),
        device: torch.device | None = None,
        masks: TextMasks | None = None,
    ) -> tuple[torch.Tensor, StageTiming]:
        """The previous image upsampled x4 (or to this network's size); the text and guidance are not read."""
        device, dtype = device or self.unet.device, self.unet.dtype
        scheduler = make_scheduler(settings.sampler, self.scheduler_config)
        size = self.unet.config.sample_size
        shape = (len(generators), self.unet.config.in_channels // 2, size, size)
        begin, sample = _start(scheduler, settings, shape, generators, device, dtype)
        low_res = low_res.to(device=device, dtype=dtype)
        if low_res.device.type == "mps":  # no antialiased bicubic there: diffusers' MPS path
            upscaled = F.interpolate(low_res, size=[size, size])
        else:
            upscaled = F.interpolate(low_res, size=[size, size], mode="bicubic", align_corners=False, antialias=True)
        evaluations = len(scheduler.timesteps) - begin
        denoiser = SwitchingUpsampler(self.unet, self.last_unet, upscaled, evaluations)
        sample, steps = timed_denoise(denoiser, scheduler, sample, generators, self.name, clock, hooks, begin)
        return sample, StageTiming(self.name, len(steps), 0.0, steps)
