"""Architecture families. A backend turns a preset into a TextToImagePipeline; the runner
only ever sees that pipeline, so a new family (unCLIP, latent DiT) is one more registration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from suite.core.registry import Registry
from suite.model.backends import cascaded, latent, unclip
from suite.model.devices import DTYPES
from suite.model.loading import LoadOptions
from suite.model.pipeline import TextToImagePipeline
from suite.model.presets import Preset, materialise


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    load: Callable[[Preset, LoadOptions], TextToImagePipeline]


BACKENDS: Registry[Backend] = Registry("backend")


BACKENDS.register("latent", Backend("latent", latent.DESCRIPTION, latent.load))
BACKENDS.register("cascaded", Backend("cascaded", cascaded.DESCRIPTION, cascaded.load))
BACKENDS.register("unclip", Backend("unclip", unclip.DESCRIPTION, unclip.load))


def build_on_meta(preset: Preset):
    """The preset's pipeline with every model built from its config on the meta device (public configs or a folder).

    The backend's own ``load`` runs unchanged, so what is built is what a sweep runs, stage for stage.
    """

    preset = materialise(preset).without_weights()
    options = LoadOptions(
        torch.device("meta"), DTYPES.get(preset.denoiser_dtype), DTYPES.get(preset.text_encoder_dtype)
    )
    return BACKENDS.get(preset.backend).load(preset, options)
