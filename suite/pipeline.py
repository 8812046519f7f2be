"""A loaded preset: text encoders plus an ordered list of stages, run as one text-to-image pipeline."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from suite.denoise import StepHook
from suite.stages import Stage, StageSettings, StageTiming, run_stage
from suite.text import EmbeddingCache, TextEncoder
from suite.timing import Clock

NEGATIVE_PROMPT = ""


@dataclass(frozen=True)
class LoadOptions:
    device: torch.device
    denoiser_dtype: torch.dtype
    text_encoder_dtype: torch.dtype
    offload: bool = False

    @property
    def on_meta(self) -> bool:
        """Build the architecture only (no weights): for counting parameters and FLOPs."""
        return self.device.type == "meta"


@dataclass
class TextToImagePipeline:
    """Text encoders and stages of one preset; ``generate`` runs every stage in order."""

    preset: str
    backend: str
    text_encoders: dict[str, TextEncoder]
    stages: list[Stage]
    options: LoadOptions
    caches: dict[str, EmbeddingCache] = field(init=False)

    def __post_init__(self) -> None:
        self.caches = {name: EmbeddingCache(encoder) for name, encoder in self.text_encoders.items()}
        if not self.options.offload:
            for module in self._modules():
                module.to(self.options.device)

    def _modules(self) -> Iterator[torch.nn.Module]:
        for encoder in self.text_encoders.values():
            yield encoder.model
        for stage in self.stages:
            yield stage.unet
            if stage.vae is not None:
                yield stage.vae

    @contextlib.contextmanager
    def resident(self, *modules: torch.nn.Module | None) -> Iterator[None]:
        """With model offload, keep ``modules`` on the device only while they are used."""
        modules = [module for module in modules if module is not None]
        if self.options.offload:
            for module in modules:
                module.to(self.options.device)
        try:
            yield
        finally:
            if self.options.offload:
                for module in modules:
                    module.to("cpu")

    def encode(self, needed: Sequence[str], universe: Sequence[str], clock: Clock) -> None:
        """Cache embeddings of ``needed`` prompts (and the empty negative prompt) for every encoder."""
        for name, cache in self.caches.items():
            with self.resident(cache.encoder.model):
                cache.encode([NEGATIVE_PROMPT], [NEGATIVE_PROMPT], clock)
                cache.encode(list(needed), list(universe), clock)

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
            with self.resident(stage.unet, stage.vae):
                image, timing = run_stage(
                    stage, stage_settings, prompt_embeds, negative_embeds, generators, clock, image, hooks
                )
            timings.append(timing)
        return (image.float() / 2 + 0.5).clamp(0, 1).cpu(), timings
