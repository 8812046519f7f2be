"""Device and dtype choice: auto picks cuda > mps > cpu; CPU runs in float32."""

from __future__ import annotations

import torch

from suite.core.errors import UserError
from suite.core.registry import Registry
from suite.model.loading import LoadOptions
from suite.model.presets import Preset

DTYPES: Registry[torch.dtype] = Registry("dtype")
DTYPES.register("fp32", torch.float32)
DTYPES.register("fp16", torch.float16)
DTYPES.register("bf16", torch.bfloat16)


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (fp32, fp16, bf16) of a torch dtype, as ``--dtype`` and the presets spell it."""
    for name, registered in DTYPES.items():
        if registered == dtype:
            return name
    raise ValueError(f"no short name for {dtype}")


def spelled(dtype: object) -> object:
    """A dtype as tables and manifests spell it (fp16), from any spelling an earlier version wrote (float16,
    torch.float16); other values unchanged."""
    if isinstance(dtype, str):
        for name, value in DTYPES.items():
            if dtype in (str(value), str(value).removeprefix("torch.")):
                return name
    return dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} requested but MPS is not available here; use --device cpu")
    return device


def _supported(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """bf16 where the device has it (Ampere+); otherwise fp16 on accelerators, fp32 on CPU."""
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return dtype


def load_options(preset: Preset, device: torch.device, dtype: str) -> LoadOptions:
    """``dtype='auto'``: the preset's dtypes on accelerators, fp32 on CPU; otherwise that dtype for all models."""
    if dtype == "auto":
        if device.type == "cpu":
            denoiser = text = torch.float32
        else:
            denoiser = DTYPES.get(preset.denoiser_dtype)
            text = _supported(DTYPES.get(preset.text_encoder_dtype), device)
    else:
        denoiser = text = _supported(DTYPES.get(dtype), device)
    offload = preset.offload == "model" and device.type != "cpu"
    return LoadOptions(device, denoiser, text, offload)
