"""A loaded preset: text encoders plus an ordered list of stages, run as one text-to-image pipeline."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import cpu_offload_with_hook

from suite.model.denoise import StepHook, TextMasks
from suite.model.loading import LoadOptions
from suite.model.stages import Stage, StageSettings, StageTiming, quiet_casts
from suite.model.text import NEGATIVE_PROMPT, EmbeddingCache, TextEncoder
from suite.model.timing import Clock


@dataclass
class TextToImagePipeline:
    """Text encoders and stages of one preset; ``generate`` runs every stage in order."""

    preset: str
    backend: str
    text_encoders: dict[str, TextEncoder]
    stages: list[Stage]
    options: LoadOptions
    caches: dict[str, EmbeddingCache] = field(init=False)
    _offload_hooks: list = field(init=False, default_factory=list)
    warmup_compile_seconds: float = field(init=False, default=0.0)  # torch.compile time not yet recorded on an item

    def __post_init__(self) -> None:
        self.caches = {name: EmbeddingCache(encoder) for name, encoder in self.text_encoders.items()}
        if self.options.offload:
            self._enable_model_offload()
        else:
            for module in self._modules():
                module.to(self.options.device)

    def _enable_model_offload(self) -> None:
        """Model offload as diffusers' ``enable_model_cpu_offload``: accelerate hooks move each model to the
        device when its forward runs and move the previous model in pipeline order back to the CPU."""

        hook = None
        for module in self._modules():
            module.to("cpu")
            _, hook = cpu_offload_with_hook(module, self.options.device, prev_module_hook=hook)
            self._offload_hooks.append(hook)

    def _offload_all(self) -> None:
        """With model offload, return every model to the CPU (diffusers' ``maybe_free_model_hooks``)."""
        for hook in self._offload_hooks:
            hook.offload()

    @contextlib.contextmanager
    def in_float32(self) -> Iterator[None]:
        """Every UNet and VAE in float32 for the duration (the regeneration of a non-finite image)."""

        models = [module for stage in self.stages for module in stage.modules()]
        dtypes = [next(module.parameters()).dtype for module in models]
        with quiet_casts():
            for module in models:
                module.to(torch.float32)
        try:
            yield
        finally:
            with quiet_casts():
                for module, dtype in zip(models, dtypes):
                    module.to(dtype)

    def free_memory(self) -> None:
        """Give cached accelerator memory back after an out-of-memory error, before a smaller retry."""

        gc.collect()
        if self.options.device.type == "cuda":
            torch.cuda.empty_cache()

    def _modules(self) -> Iterator[torch.nn.Module]:
        for encoder in self.text_encoders.values():
            yield encoder.model
        for stage in self.stages:
            yield from stage.modules()

    def layout_stage(self) -> Any:
        """The stage that lays out the image, where the prompt's composition is decided: the latent loop, the
        cascade's base, or unCLIP's decoder (its prior makes an embedding, not an image)."""
        return next(stage for stage in self.stages if getattr(stage, "denoises_image", True))

    def encode(self, needed: Sequence[str], universe: Sequence[str], clock: Clock) -> None:
        """Cache embeddings of ``needed`` prompts (and the empty negative prompt) for every encoder."""
        for cache in self.caches.values():
            cache.encode([NEGATIVE_PROMPT], [NEGATIVE_PROMPT], clock)
            cache.encode(list(needed), list(universe), clock)
        self._offload_all()

    def text_encode_seconds(self, prompt: str) -> float:
        """Measured encoding time of one prompt, summed over the preset's text encoders."""
        return sum(cache.seconds_per_prompt[prompt] for cache in self.caches.values())

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        settings: Sequence[StageSettings],
        generators: list[torch.Generator],
        clock: Clock,
        hooks: Sequence[StepHook] = (),
    ) -> tuple[torch.Tensor, list[StageTiming]]:
        """Images in [0, 1] (float32, CPU, NCHW) for prompts already encoded, one generator per image."""
        if len(settings) != len(self.stages):
            raise ValueError(f"{self.preset}: {len(self.stages)} stages but {len(settings)} stage settings")
        image, timings = None, []
        for stage, stage_settings in zip(self.stages, settings):
            cache = self.caches[stage.text_encoder]
            prompt_embeds = cache.lookup(list(prompts))
            negative_embeds = cache.lookup([NEGATIVE_PROMPT] * len(prompts))
            masks = None
            if stage.reads_text_mask:
                encoder = self.text_encoders[stage.text_encoder]
                masks = TextMasks(
                    encoder.attention_mask(list(prompts)), encoder.attention_mask([NEGATIVE_PROMPT] * len(prompts))
                )
            image, timing = stage.run(  # an image, or (unCLIP's prior) an image embedding for the next stage
                stage_settings,
                prompt_embeds,
                negative_embeds,
                generators,
                clock,
                image,
                hooks,
                device=self.options.device,
                masks=masks,
            )
            timings.append(timing)
        self._offload_all()
        return (image.float() / 2 + 0.5).clamp(0, 1).cpu(), timings
