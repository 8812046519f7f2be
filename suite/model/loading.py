"""Loading components from the hub or a local folder: safetensors only, never remote code.

This is the one place where diffusers / transformers ``from_pretrained`` is called, and where
their many failure modes become one line that names the preset, the location and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from transformers import AutoTokenizer, PretrainedConfig

from suite.core.errors import UserError
from suite.model.presets import TOY_WEIGHTS
from suite.model.sources import ReferenceConfigs, Source
from suite.model.stages import quiet_casts

HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class LoadOptions:
    """Where a preset's models run and in which dtypes; ``offload``: each model on the device only while it runs."""

    device: torch.device
    denoiser_dtype: torch.dtype
    text_encoder_dtype: torch.dtype
    offload: bool = False
    random_weights: bool = False  # build from configs with random weights on ``device``: for timing (`suite bench`)

    @property
    def on_meta(self) -> bool:
        """Build the architecture only (no weights): for counting parameters and FLOPs."""
        return self.device.type == "meta"

    def loader(self, preset: str, key: str, location: Path | Source | ReferenceConfigs) -> ComponentLoader:
        """The loader of one source under these options: checkpoint weights, meta (no weights) or random weights."""
        random_on = self.device if self.random_weights else None
        return ComponentLoader(preset, key, location, meta=self.on_meta, random_on=random_on)


@dataclass(frozen=True)
class ComponentLoader:
    """Loads the subfolders (unet/, vae/, text_encoder/ ...) of one repository-shaped location.

    With ``meta=True`` models are built from their configs alone on the meta device (no weights,
    no memory, no tokenizer): the architecture for counting parameters and FLOPs. With
    ``random_on`` set they are built from their configs with random weights, directly on that
    device (no tokenizer): the architecture for timing, since speed does not depend on weight values.
    """

    preset: str
    key: str
    location: Path | Source | ReferenceConfigs
    meta: bool = False
    random_on: torch.device | None = None

    def _arguments(self, dtype: torch.dtype | None) -> tuple[str, dict[str, Any]]:
        if isinstance(self.location, Path):
            if not self.location.is_dir():
                raise UserError(
                    f"preset {self.preset!r}: no model folder at {self.location} "
                    f"(expected a diffusers-format folder for {self.key!r}; see `suite list` for the layout)"
                )
            return str(self.location), {"local_files_only": True}
        kwargs: dict[str, Any] = {"revision": self.location.revision}
        if self.location.variant and dtype in HALF:
            kwargs["variant"] = self.location.variant
        return self.location.repo_id, kwargs

    def _failure(self, subfolder: str, error: Exception) -> UserError:
        if isinstance(self.location, Path):
            return UserError(
                f"preset {self.preset!r}: cannot load {subfolder}/ from {self.location}: {error}".splitlines()[0]
            )
        revision = self.location.revision or "main"
        return UserError(
            f"preset {self.preset!r}: {self.location.repo_id}@{revision} ({subfolder}/) is not available offline; "
            f"download it (`hf download {self.location.repo_id}`) or point the preset at a local copy "
            f"with --model-dir {self.preset}=PATH"
        )

    def model(self, cls: type, subfolder: str, dtype: torch.dtype) -> Any:
        """A diffusers or transformers model in ``dtype``, from safetensors weights only."""
        if self.meta:
            return model_on_meta(cls, self._config(cls, subfolder), dtype)
        if self.random_on is not None:
            return model_with_random_weights(cls, self._config(cls, subfolder), self.random_on, dtype)
        name, kwargs = self._arguments(dtype)
        dtype_key = "torch_dtype" if cls.__module__.startswith("diffusers") else "dtype"
        try:
            model = cls.from_pretrained(name, subfolder=subfolder, use_safetensors=True, **{dtype_key: dtype}, **kwargs)
        except (OSError, ValueError) as error:
            raise self._failure(subfolder, error) from error
        return model.eval().requires_grad_(False)

    def _config(self, cls: type, subfolder: str) -> dict[str, Any]:
        """The config of ``subfolder`` as a plain dict, read from the public configs or a folder/hub."""
        if isinstance(self.location, ReferenceConfigs):
            return self.location.read(subfolder)
        name, kwargs = self._arguments(None)
        kwargs.pop("variant", None)
        try:
            if cls.__module__.startswith("diffusers"):
                return dict(cls.load_config(name, subfolder=subfolder, **kwargs))
            return cls.config_class.from_pretrained(name, subfolder=subfolder, **kwargs).to_dict()
        except (OSError, ValueError) as error:
            raise self._failure(subfolder, error) from error

    def model_type(self, subfolder: str) -> str:
        """The ``model_type`` in a transformers model's config ("t5", "clip_text_model", ...); "" if it has none."""

        if isinstance(self.location, ReferenceConfigs):
            return self.location.read(subfolder).get("model_type", "")
        name, kwargs = self._arguments(None)
        kwargs.pop("variant", None)
        try:
            config, _ = PretrainedConfig.get_config_dict(name, subfolder=subfolder, **kwargs)
        except (OSError, ValueError) as error:
            raise self._failure(subfolder, error) from error
        return config.get("model_type", "")

    def tokenizer(self, subfolder: str = "tokenizer") -> Any:
        if self.meta or self.random_on is not None:
            return None  # models built from configs alone are counted or timed, never fed text
        name, kwargs = self._arguments(None)
        kwargs.pop("variant", None)
        try:
            return AutoTokenizer.from_pretrained(name, subfolder=subfolder, trust_remote_code=False, **kwargs)
        except (OSError, ValueError) as error:
            raise self._failure(subfolder, error) from error

    def scheduler(self, subfolder: str) -> Any:
        """The scheduler saved in ``subfolder``, built as the class its config names."""

        config = self._config(diffusers.DDPMScheduler, subfolder)
        scheduler_class = getattr(diffusers, config.get("_class_name", "DDPMScheduler"))
        return scheduler_class.from_config(config)


def _from_config(cls: type, config: Any, device: torch.device | str) -> torch.nn.Module:
    """A diffusers or transformers model of class ``cls`` built from ``config`` (a dict or config object) on ``device``."""
    with torch.device(device):
        if cls.__module__.startswith("diffusers"):
            return cls.from_config(config)
        return cls(config if isinstance(config, cls.config_class) else cls.config_class.from_dict(config))


def model_on_meta(cls: type, config: Any, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A diffusers or transformers model of class ``cls`` built from ``config`` on the meta device: no weights.

    ``config`` is a dict or the model's own config object. Not accelerate's ``init_empty_weights``:
    it unties T5's shared embedding.
    """
    model = _from_config(cls, config, "meta")
    if dtype is not None:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


def model_with_random_weights(cls: type, config: Any, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``cls`` built from ``config`` with its own random initialisation, directly on ``device``, then cast to ``dtype``.

    Initialised in float32 (some initialisers are not defined for half types), one model at a time,
    so the float32 copy of the largest model is the peak. Nothing is read but the config.
    """

    model = _from_config(cls, config, device)
    with quiet_casts():
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


def check_available(preset) -> None:
    """Fail early, before a run folder is written, if a preset's folders or hub files cannot be reached.

    Local folders must exist. Hub repositories must have their small config files in the local
    cache or be downloadable now; the weights themselves are fetched by ``from_pretrained``.
    """
    for key, location in preset.source_paths().items():
        if isinstance(location, Path):
            if not location.is_dir() and location.is_relative_to(TOY_WEIGHTS):
                ablation = location.is_relative_to(TOY_WEIGHTS / "ablation")
                raise UserError(
                    f"preset {preset.name!r}: no model folder at {location}; train it: "
                    f"`suite train toy{' --ablation' if ablation else ''}` (resumable)"
                )
            if not location.is_dir():
                raise UserError(
                    f"preset {preset.name!r}: no model folder at {location}; download the checkpoint "
                    f"(`hf download <repo> --local-dir {location}`) or fix --model-dir"
                )
            check_weight_files(preset.name, location)
            continue

        try:
            snapshot_download(location.repo_id, revision=location.revision, allow_patterns=["*.json"])
        except Exception as error:
            raise ComponentLoader(preset.name, key, location)._failure("config", error) from error


def check_weight_files(preset_name: str, folder: Path) -> None:
    """Every safetensors file under a local model folder opens: its header parses and its data is all there
    (``safe_open`` maps the file and checks the header's offsets against its size; no tensor is read)."""
    for path in sorted(folder.rglob("*.safetensors")):
        _open_safetensors(preset_name, path)


def _open_safetensors(preset_name: str, path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as error:
        raise UserError(
            f"preset {preset_name!r}: {path} is not a whole safetensors file ({str(error).splitlines()[0][:80]})"
        ) from None


def describe_location(location: Path | Source) -> str | dict[str, Any]:
    """What the manifest records about one source: a resolved local path, or hub id + revision + variant."""
    if isinstance(location, Path):
        return str(location.resolve())
    return {"repo_id": location.repo_id, "revision": location.revision or "main", "variant": location.variant}
