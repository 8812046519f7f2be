"""The diffusers baseline: diffusers' own pipeline for one stage, built from the suite's modules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import diffusers
import torch

from suite.model.builders import word_level_clip_tokenizer
from suite.model.pipeline import TextToImagePipeline
from suite.model.samplers import consumes_learned_variance, make_scheduler
from suite.model.stages import Stage, StageSettings


def diffusers_scheduler(sampler: str, config) -> Any:
    """The suite's scheduler for ``sampler``, made palatable to diffusers' IF pipelines.

    IF pipelines keep the UNet's variance channels whenever the scheduler's config says
    ``learned_range``, which a DDIM or DPM-Solver built from IF's config still says; record the
    truth so the pipeline splits them off as the suite does.
    """
    scheduler = make_scheduler(sampler, config)
    if not consumes_learned_variance(scheduler):
        scheduler.register_to_config(variance_type="fixed_small")
    return scheduler


def diffusers_stage(
    stage: Stage, kind: str, settings: StageSettings, encoder_model: torch.nn.Module
) -> Callable[..., torch.Tensor]:
    """A call of diffusers' own pipeline for one stage, built from the same modules.

    Returns ``run(prompt_embeds, negative_prompt_embeds, generators, low_res, steps)`` giving the
    stage's output in the form the next stage takes.
    """
    scheduler = diffusers_scheduler(settings.sampler, stage.scheduler_config)
    common = {"safety_checker": None, "feature_extractor": None}
    if kind == "latent":
        pipe = diffusers.StableDiffusionPipeline(
            vae=stage.vae,
            text_encoder=None,  # embeddings are given; the pipeline then casts them to the UNet's dtype, as the suite does
            tokenizer=None,
            unet=stage.unet,
            scheduler=scheduler,
            requires_safety_checker=False,
            **common,
        )
    elif kind == "latent-dit":
        pipe = diffusers.PixArtAlphaPipeline(
            tokenizer=None,
            text_encoder=None,  # embeddings are given; the pipeline then casts them to the transformer's dtype
            vae=stage.vae,
            transformer=stage.unet,
            scheduler=scheduler,
        )
    elif kind == "pixel-base":
        pipe = diffusers.IFPipeline(
            tokenizer=None,
            text_encoder=None,  # embeddings are given; the pipeline then casts them to the UNet's dtype, as the suite does
            unet=stage.unet,
            scheduler=scheduler,
            watermarker=None,
            requires_safety_checker=False,
            **common,
        )
    elif kind == "pixel-sr":
        pipe = diffusers.IFSuperResolutionPipeline(
            tokenizer=None,
            text_encoder=None,  # embeddings are given; the pipeline then casts them to the UNet's dtype, as the suite does
            unet=stage.unet,
            scheduler=scheduler,
            image_noising_scheduler=stage.conditioning.noising_scheduler,
            watermarker=None,
            requires_safety_checker=False,
            **common,
        )
    elif kind == "latent-sr":
        pipe = diffusers.StableDiffusionUpscalePipeline(
            vae=stage.vae,
            text_encoder=None,  # embeddings are given; the pipeline then casts them to the UNet's dtype, as the suite does
            tokenizer=None,
            unet=stage.unet,
            low_res_scheduler=stage.conditioning.noising_scheduler,
            scheduler=scheduler,
            watermarker=None,
            **common,
        )
    else:
        raise ValueError(f"no diffusers pipeline for a {kind!r} stage")
    pipe.set_progress_bar_config(disable=True)

    def run(prompt_embeds, negative_prompt_embeds, generators, low_res, steps: int) -> torch.Tensor:
        kwargs: dict[str, Any] = {
            "prompt_embeds": prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
            "num_inference_steps": steps,
            "guidance_scale": settings.guidance_scale,
            "generator": generators,
            "output_type": "pt",
        }
        if kind == "latent-dit":  # the bench's random token ids are all real tokens: masks of ones on both sides
            ones = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=prompt_embeds.device)
            kwargs |= {
                "negative_prompt": None,  # its default "" may not be passed beside negative_prompt_embeds
                "prompt_attention_mask": ones,
                "negative_prompt_attention_mask": ones,
                "use_resolution_binning": False,
            }
        if kind == "pixel-sr":
            kwargs |= {"image": low_res, "noise_level": settings.noise_level}
        elif kind == "latent-sr":  # the x4 upscaler pipeline takes images in [0, 1] and normalises them itself
            kwargs |= {"image": low_res / 2 + 0.5, "noise_level": settings.noise_level}
        return pipe(**kwargs).images

    return run


def diffusers_unclip(pipeline: TextToImagePipeline, settings: Sequence[StageSettings]) -> Callable[..., torch.Tensor]:
    """diffusers' ``UnCLIPPipeline`` from the suite's modules, for the whole preset at its stage settings.

    Returns ``run(text, generators, steps)``: ``text`` the encoder's (states, pooled) output given as
    ``text_model_output``; ``steps`` (warm-up) replaces every stage's step count. The pipeline encodes its empty
    negative prompt itself, so it needs a tokenizer: random-weight builds have none, and a word-level CLIP tokenizer
    stands in (the empty prompt is begin and end tokens either way).
    """
    prior, decoder, upsampler = pipeline.stages
    encoder = pipeline.text_encoders[prior.text_encoder]
    schedulers = [
        make_scheduler(knobs.sampler, stage.scheduler_config) for stage, knobs in zip(pipeline.stages, settings)
    ]
    pipe = diffusers.UnCLIPPipeline(
        prior=prior.unet,
        decoder=decoder.unet,
        text_encoder=encoder.model,
        tokenizer=encoder.tokenizer or word_level_clip_tokenizer(["a"]),
        text_proj=decoder.text_proj,
        super_res_first=upsampler.unet,
        super_res_last=upsampler.last_unet,
        prior_scheduler=schedulers[0],
        decoder_scheduler=schedulers[1],
        super_res_scheduler=schedulers[2],
    )
    pipe.set_progress_bar_config(disable=True)

    def run(text, generators, steps: int | None) -> torch.Tensor:
        states, pooled = text
        prior_steps, decoder_steps, upsampler_steps = (steps or knobs.num_inference_steps for knobs in settings)
        return pipe(
            text_model_output=(pooled, states),
            text_attention_mask=torch.ones(states.shape[:2], dtype=torch.bool, device=states.device),
            prior_num_inference_steps=prior_steps,
            decoder_num_inference_steps=decoder_steps,
            super_res_num_inference_steps=upsampler_steps,
            prior_guidance_scale=settings[0].guidance_scale,
            decoder_guidance_scale=settings[1].guidance_scale,
            generator=generators,
            output_type="np",
        ).images

    return run
