"""FLOPs of a pipeline's model calls, counted by torch's FlopCounterMode on the meta device.

Every model is run once per input shape on meta tensors: shapes flow through the real forward
code, nothing is computed and no memory is allocated, so a 4.3B-parameter UNet is counted in a
fraction of a second on a laptop. Counts follow torch's convention: matrix multiplications,
convolutions and attention, 2 FLOPs per multiply-add; elementwise work (norms, activations,
the scheduler's update) is not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from suite.model.denoise import GuidedUNet, TextMasks, uses_guidance
from suite.model.loading import model_on_meta
from suite.model.presets import PRESETS
from suite.model.samplers import model_evaluations
from suite.model.stages import IMAGE_CHANNELS, Stage, StageSettings, micro_conditions
from suite.model.unclip import DecoderStage, GuidedPrior, PriorStage, SuperResolutionStage, SwitchingUpsampler

META = torch.device("meta")
GB = 1e9
GIGA = 1e9
COUNTING_TIMESTEP = 500  # any timestep: the count does not depend on it


def _register_cpu_attention() -> None:
    """Count the CPU flash-attention kernel as torch counts the CUDA ones (torch leaves it at 0)."""
    operator = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if operator is None or operator in flop_counter.flop_registry or operator.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(operator)
    def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_attention()


def count_flops(function: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Total FLOPs of one call of ``function`` (2 per multiply-add)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        function(*args, **kwargs)
    return int(counter.get_total_flops())


def on_meta(module: torch.nn.Module) -> torch.nn.Module:
    """The same architecture on the meta device: ``module`` itself if it is there already.

    Built from the module's config, as ``from_config`` / ``Model(config)`` would, with no weights.
    """
    if all(parameter.is_meta for parameter in module.parameters()):
        return module
    return model_on_meta(type(module), module.config)


def text_encoder_flops(model: torch.nn.Module, max_length: int) -> int:
    """One prompt through a text encoder, padded to ``max_length`` tokens.

    No attention mask is passed: a mask changes no FLOP count, and transformers inspects mask
    values, which meta tensors do not have.
    """
    input_ids = torch.zeros(1, max_length, dtype=torch.long, device=META)
    return count_flops(on_meta(model), input_ids)


@dataclass(frozen=True)
class StageCost:
    """What one stage costs for one image, per model evaluation and for decoding."""

    stage: str
    sample_shape: tuple[int, int, int]  # channels, height, width of what the loop denoises
    image_shape: tuple[int, int, int]  # the stage's output image
    flops_per_evaluation: int  # one UNet call, no guidance (batch 1)
    flops_per_guided_evaluation: int  # one UNet call with classifier-free guidance (batch 2)
    decode_flops: int  # VAE decoder; 0 for pixel stages
    scheduler_config: Mapping[str, Any]

    @property
    def values_per_step(self) -> int:
        channels, height, width = self.sample_shape
        return channels * height * width

    def evaluations(self, settings: StageSettings) -> int:
        return model_evaluations(
            settings.sampler, settings.num_inference_steps, self.scheduler_config, settings.strength
        )

    def flops_per_step(self, settings: StageSettings) -> int:
        """One model evaluation under ``settings``: with guidance, the batch of two (unconditional and conditional)."""
        return self.flops_per_guided_evaluation if uses_guidance(settings.guidance_scale) else self.flops_per_evaluation

    def flops(self, settings: StageSettings) -> int:
        """Denoising plus decoding FLOPs of one image under ``settings``."""
        return self.evaluations(settings) * self.flops_per_step(settings) + self.decode_flops


@dataclass(frozen=True)
class PipelineCost:
    """FLOPs of one preset's pipeline for one image: text encoding plus every stage."""

    preset: str
    text_encoder_flops: Mapping[str, int]  # encoder name -> one prompt
    stages: tuple[StageCost, ...]

    def flops_per_image(self, settings: Sequence[StageSettings]) -> int:
        """Every model call one image needs; the negative prompt is encoded once per run and not counted."""
        return sum(self.text_encoder_flops.values()) + sum(
            stage.flops(stage_settings) for stage, stage_settings in zip(self.stages, settings)
        )


def _unclip_stage_cost(
    stage: PriorStage | DecoderStage | SuperResolutionStage, max_length: int
) -> tuple[StageCost, torch.Tensor]:
    """Count one of unCLIP's stages. The prior's "sample" is its image embedding (counted as D x 1 x 1); text_proj
    runs once per image, not per step, and is not counted (a few linear layers)."""
    unet = on_meta(stage.unet)
    meta = {"device": META, "dtype": unet.dtype}
    timestep = torch.tensor(COUNTING_TIMESTEP, device=META)
    ones = torch.ones(1, max_length, dtype=torch.bool, device=META)
    masks = TextMasks(ones, ones)
    if isinstance(stage, PriorStage):
        width = unet.config.embedding_dim
        sample_shape = image_shape = (width, 1, 1)
        sample = torch.empty(1, width, **meta)
        text = (torch.empty(1, max_length, width, **meta), torch.empty(1, width, **meta))

        def denoiser(guidance_scale: float):
            return GuidedPrior(unet, text, text, masks, guidance_scale)

        output = torch.empty(1, width, **meta)
    else:
        side = unet.config.sample_size
        channels = unet.config.in_channels // (2 if isinstance(stage, SuperResolutionStage) else 1)
        sample_shape = image_shape = (channels, side, side)
        sample = output = torch.empty(1, channels, side, side, **meta)
        if isinstance(stage, SuperResolutionStage):

            def denoiser(guidance_scale: float):
                return SwitchingUpsampler(unet, on_meta(stage.last_unet), sample, evaluations=2)

        else:
            text_proj = on_meta(stage.text_proj)
            width = text_proj.config.clip_embeddings_dim
            text = (torch.empty(1, max_length, width, **meta), torch.empty(1, width, **meta))
            image_embeddings = torch.empty(1, width, **meta)
            meta_stage = DecoderStage(stage.name, unet, text_proj, stage.scheduler_config, stage.text_encoder)

            def denoiser(guidance_scale: float):
                guided = uses_guidance(guidance_scale)
                conditions = meta_stage.conditions(image_embeddings, text, text, masks, guided)
                return GuidedUNet(unet=unet, guidance_scale=guidance_scale, **conditions)

    cost = StageCost(
        stage=stage.name,
        sample_shape=sample_shape,
        image_shape=image_shape,
        flops_per_evaluation=count_flops(denoiser(1.0), sample, timestep),
        flops_per_guided_evaluation=count_flops(denoiser(2.0), sample, timestep),
        decode_flops=0,
        scheduler_config=dict(stage.scheduler_config),
    )
    return cost, output


def _stage_cost(stage: Stage, low_res: torch.Tensor | None, max_length: int) -> tuple[StageCost, torch.Tensor]:
    """Count one stage at the size its input gives it; return its cost and a meta image of its output."""
    if isinstance(stage, (PriorStage, DecoderStage, SuperResolutionStage)):
        return _unclip_stage_cost(stage, max_length)
    unet = on_meta(stage.unet)
    height, width = stage.sample_size(low_res)
    meta = {"device": META, "dtype": unet.dtype}
    sample = torch.empty(1, stage.sample_channels, height, width, **meta)
    if stage.transformer:  # PixArt-alpha: T5 states go in at caption_channels and are projected inside
        embedding_dim = unet.config["caption_channels"]
    else:
        embedding_dim = unet.config.get("encoder_hid_dim") or unet.config["cross_attention_dim"]
    prompt_embeds = torch.empty(1, max_length, embedding_dim, **meta)
    conditioning_image = class_labels = None
    if stage.conditioning is not None:
        conditioning_image = torch.empty(1, IMAGE_CHANNELS, height, width, **meta)
        class_labels = torch.zeros(1, dtype=torch.long, device=META)
    timestep = torch.tensor(COUNTING_TIMESTEP, device=META)

    def evaluation_flops(guidance_scale: float) -> int:
        denoiser = GuidedUNet(
            unet,
            prompt_embeds,
            prompt_embeds,
            guidance_scale,
            conditioning_image,
            class_labels,
            transformer=stage.transformer,
            added_cond_kwargs=micro_conditions(stage, (height, width), 1, unet.dtype, META)
            if stage.transformer
            else None,
        )
        return count_flops(denoiser, sample, timestep)

    decode_flops, scale = 0, stage.scale_factor
    if stage.vae is not None:
        vae = on_meta(stage.vae)
        decode_flops = count_flops(vae.decode, sample.to(vae.dtype))
    image = torch.empty(1, IMAGE_CHANNELS, height * scale, width * scale, device=META)
    cost = StageCost(
        stage=stage.name,
        sample_shape=(stage.sample_channels, height, width),
        image_shape=(IMAGE_CHANNELS, height * scale, width * scale),
        flops_per_evaluation=evaluation_flops(1.0),
        flops_per_guided_evaluation=evaluation_flops(2.0),
        decode_flops=decode_flops,
        scheduler_config=dict(stage.scheduler_config),
    )
    return cost, image


def pipeline_cost(pipeline) -> PipelineCost:
    """Count a loaded (or meta-built) ``TextToImagePipeline`` once; reuse the result for every grid point."""
    text = {
        name: text_encoder_flops(encoder.model, encoder.max_length) for name, encoder in pipeline.text_encoders.items()
    }
    stages, image = [], None
    for stage in pipeline.stages:
        max_length = pipeline.text_encoders[stage.text_encoder].max_length
        cost, image = _stage_cost(stage, image, max_length)
        stages.append(cost)
    return PipelineCost(pipeline.preset, text, tuple(stages))


def weights_bytes(module: torch.nn.Module) -> int:
    return sum(parameter.numel() * parameter.element_size() for parameter in module.parameters())


def shape_text(shape: Sequence[int]) -> str:
    channels, height, width = shape
    return f"{height}x{width}x{channels}"


def stage_shape(preset: str, kind: str, stage, stage_cost) -> dict:
    """What one stage denoises and produces, and the weights it keeps resident: independent of the settings."""
    channels, height, width = stage_cost.image_shape
    resident = sum(weights_bytes(module) for module in stage.modules())
    return {
        "preset": preset,
        "stage": stage.name,
        "kind": kind,
        "sample": shape_text(stage_cost.sample_shape),
        "values_per_step": stage_cost.values_per_step,
        "image": shape_text(stage_cost.image_shape),
        "image_values": channels * height * width,
        "image_values_per_step_value": channels * height * width / stage_cost.values_per_step,
        "resident_weights_gb": resident / GB,
    }


def stage_cost_rows(pipeline, cost: PipelineCost) -> list[dict]:
    """One row per stage: shapes, resident weights and GFLOPs per model evaluation (unguided and guided) and decode.

    What a run folder's ``costs`` table holds; FLOPs per image follow from it and a grid point's settings.
    """
    preset = PRESETS.get(pipeline.preset)
    return [
        stage_shape(pipeline.preset, spec.kind, stage, stage_cost)
        | {
            "gflops_per_evaluation": stage_cost.flops_per_evaluation / GIGA,
            "gflops_per_guided_evaluation": stage_cost.flops_per_guided_evaluation / GIGA,
            "decode_gflops": stage_cost.decode_flops / GIGA,
        }
        for spec, stage, stage_cost in zip(preset.stages, pipeline.stages, cost.stages)
    ]
