"""Architecture families. A backend turns a preset into a TextToImagePipeline; the runner
only ever sees that pipeline, so a new family (unCLIP, latent DiT) is one more registration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from suite.loading import LoadOptions
from suite.pipeline import TextToImagePipeline
from suite.presets import Preset
from suite.registry import Registry


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    load: Callable[[Preset, LoadOptions], TextToImagePipeline]


BACKENDS: Registry[Backend] = Registry("backend")


def _register_builtin() -> None:
    from suite.backends import cascaded, latent

    BACKENDS.register("latent", Backend("latent", latent.DESCRIPTION, latent.load))
    BACKENDS.register("cascaded", Backend("cascaded", cascaded.DESCRIPTION, cascaded.load))


_register_builtin()
