"""Cost profiles of whole architectures from their configs alone: parameters, memory, values and FLOPs.

Each preset is built by its own backend, through the same loading code as a real run, but on
the meta device from its configs (the public ones in ``suite/reference_configs`` for hub
presets, the folder's own for local and built-in presets): no weights, no network, seconds.

Example:
    >>> profile = profile_presets(["sd15", "if-xl"], ProfileSettings(num_inference_steps=50))
    >>> profile.pipelines[["preset", "tflops_per_image"]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from suite.core.files import atomic_write_table, atomic_write_text, ensure_writable
from suite.core.formatting import markdown_table
from suite.model.backends import build_on_meta
from suite.model.devices import DTYPES, dtype_name
from suite.model.flops import GB, PipelineCost, pipeline_cost, stage_shape, weights_bytes
from suite.model.presets import PRESETS
from suite.run.grid import preset_stage_settings

BYTES_PER_VALUE = {name: DTYPES.get(name).itemsize for name in ("fp32", "fp16", "bf16")}
TERA = 1e12


@dataclass(frozen=True)
class ProfileSettings:
    """The generation settings FLOPs per image are counted for (super-resolution stages keep their defaults)."""

    sampler: str = "ddim"
    num_inference_steps: int = 50
    guidance_scale: float = 7.5


@dataclass(frozen=True)
class Profile:
    """Three tidy tables: one row per component, per stage and per pipeline."""

    components: pd.DataFrame
    stages: pd.DataFrame
    pipelines: pd.DataFrame


def _parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())  # tied weights counted once


def _component_row(
    preset: str, component: str, module: torch.nn.Module, flops: int | None, guided_flops: int | None
) -> dict:
    parameters = _parameters(module)
    row = {"preset": preset, "component": component, "class": type(module).__name__, "parameters": parameters}
    row |= {f"{dtype}_gb": parameters * size / GB for dtype, size in BYTES_PER_VALUE.items()}
    row |= {
        "dtype": dtype_name(next(module.parameters()).dtype),
        "weights_gb": weights_bytes(module) / GB,
        "gflops_per_call": None if flops is None else flops / 1e9,
        "gflops_per_guided_call": None if guided_flops is None else guided_flops / 1e9,
    }
    return row


def _component_rows(pipeline, cost: PipelineCost) -> list[dict]:
    rows = [
        _component_row(pipeline.preset, f"text_encoder:{name}", encoder.model, cost.text_encoder_flops[name], None)
        for name, encoder in pipeline.text_encoders.items()
    ]
    for stage, stage_cost in zip(pipeline.stages, cost.stages):
        for part, module in stage.parts().items():
            if part == "vae":
                flops = (stage_cost.decode_flops, None)
            elif module is stage.unet or part == "last_unet":  # the denoiser (unCLIP's last upsampler: same shape)
                flops = (stage_cost.flops_per_evaluation, stage_cost.flops_per_guided_evaluation)
            else:  # unCLIP's text_proj: once per image, a few linear layers, not counted
                flops = (None, None)
            rows.append(_component_row(pipeline.preset, f"{stage.name}:{part}", module, *flops))
    return rows


def _stage_rows(pipeline, cost: PipelineCost, settings: ProfileSettings) -> list[dict]:
    preset = PRESETS.get(pipeline.preset)
    stage_settings = preset_stage_settings(
        preset, settings.sampler, settings.num_inference_steps, settings.guidance_scale
    )
    rows = []
    for spec, stage, stage_cost, knobs in zip(preset.stages, pipeline.stages, cost.stages, stage_settings):
        rows.append(
            stage_shape(pipeline.preset, spec.kind, stage, stage_cost)
            | {
                "sampler": knobs.sampler,
                "num_inference_steps": knobs.num_inference_steps,
                "guidance_scale": knobs.guidance_scale,
                "model_evaluations": stage_cost.evaluations(knobs),
                "tflops_per_step": stage_cost.flops_per_step(knobs) / TERA,
                "decode_tflops": stage_cost.decode_flops / TERA,
                "tflops_per_image": stage_cost.flops(knobs) / TERA,
            }
        )
    return rows


def _pipeline_row(pipeline, cost: PipelineCost, stage_rows: list[dict], settings: ProfileSettings) -> dict:
    preset = PRESETS.get(pipeline.preset)
    stage_settings = preset_stage_settings(
        preset, settings.sampler, settings.num_inference_steps, settings.guidance_scale
    )
    text_bytes = [weights_bytes(encoder.model) for encoder in pipeline.text_encoders.values()]
    stage_bytes = [row["resident_weights_gb"] * GB for row in stage_rows]
    total_bytes = sum(text_bytes) + sum(stage_bytes)
    modules = [encoder.model for encoder in pipeline.text_encoders.values()]
    modules += [module for stage in pipeline.stages for module in stage.modules()]
    last = stage_rows[-1]
    return {
        "preset": pipeline.preset,
        "backend": pipeline.backend,
        "image": last["image"],
        "image_values": last["image_values"],
        "values_per_step_by_stage": " / ".join(f"{row['values_per_step']:,}" for row in stage_rows),
        "parameters": sum(_parameters(module) for module in modules),
        "weights_gb": total_bytes / GB,
        "peak_resident_weights_gb": (max(text_bytes + stage_bytes) if preset.offload == "model" else total_bytes) / GB,
        "offload": preset.offload,
        "text_encoding_tflops": sum(cost.text_encoder_flops.values()) / TERA,
        "denoising_tflops": sum(row["tflops_per_image"] - row["decode_tflops"] for row in stage_rows),
        "decode_tflops": sum(row["decode_tflops"] for row in stage_rows),
        "tflops_per_image": cost.flops_per_image(stage_settings) / TERA,
    }


def profile_presets(
    names: Sequence[str], settings: ProfileSettings = ProfileSettings(), model_dirs: dict[str, Path] | None = None
) -> Profile:
    """Profile each named preset (optionally read from a local folder); FLOPs ratios are to the first."""
    components, stages, pipelines = [], [], []
    for name in names:
        preset = PRESETS.get(name)
        if model_dirs and name in model_dirs:
            preset = replace(preset, local_dir=Path(model_dirs[name]))
        pipeline = build_on_meta(preset)
        cost = pipeline_cost(pipeline)
        stage_rows = _stage_rows(pipeline, cost, settings)
        components += _component_rows(pipeline, cost)
        stages += stage_rows
        pipelines.append(_pipeline_row(pipeline, cost, stage_rows, settings))
    pipeline_table = pd.DataFrame(pipelines)
    pipeline_table["flops_ratio_to_first"] = (
        pipeline_table["tflops_per_image"] / pipeline_table["tflops_per_image"].iloc[0]
    )
    return Profile(pd.DataFrame(components), pd.DataFrame(stages), pipeline_table)


def _headline(row: pd.Series, stages: pd.DataFrame, first: str) -> str:
    """One sentence per preset: values denoised per step against the image's values, and FLOPs per image."""
    per_stage = ", ".join(
        f"{stage.sample} = {stage.values_per_step:,} ({row.image_values / stage.values_per_step:.0f}x fewer)"
        for stage in stages.itertuples()
    )
    return (
        f"- **{row.preset}**: a {row.image} image is {row.image_values:,} values; each denoising step works on "
        f"{per_stage}. {row.tflops_per_image:,.1f} TFLOPs per image, {row.flops_ratio_to_first:.2f}x {first}."
    )


def render_profile(profile: Profile, settings: ProfileSettings) -> str:
    """The profile as markdown: headline sentences, then the pipeline, stage and component tables."""

    first = profile.pipelines["preset"].iloc[0]
    lines = [
        f"FLOPs per image: sampler {settings.sampler}, {settings.num_inference_steps} steps, guidance {settings.guidance_scale:g} "
        "where the preset fixes none (other stages: preset defaults); counted on the meta device with "
        "torch FlopCounterMode (2 FLOPs per multiply-add; matmuls, convolutions and attention).",
        "",
    ]
    lines += [
        _headline(row, profile.stages[profile.stages["preset"] == row.preset], first)
        for row in profile.pipelines.itertuples()
    ]
    pipelines = profile.pipelines[
        [
            "preset",
            "image",
            "values_per_step_by_stage",
            "parameters",
            "weights_gb",
            "peak_resident_weights_gb",
            "text_encoding_tflops",
            "denoising_tflops",
            "decode_tflops",
            "tflops_per_image",
            "flops_ratio_to_first",
        ]
    ]
    stages = profile.stages[
        [
            "preset",
            "stage",
            "kind",
            "sample",
            "values_per_step",
            "image",
            "image_values_per_step_value",
            "num_inference_steps",
            "guidance_scale",
            "model_evaluations",
            "tflops_per_step",
            "decode_tflops",
            "tflops_per_image",
            "resident_weights_gb",
        ]
    ]
    components = profile.components[
        [
            "preset",
            "component",
            "class",
            "parameters",
            "fp32_gb",
            "fp16_gb",
            "dtype",
            "weights_gb",
            "gflops_per_call",
            "gflops_per_guided_call",
        ]
    ]
    number = {"parameters": ",d", "values_per_step": ",d"}
    gigabytes = {
        column: ".3f"
        for column in ("weights_gb", "peak_resident_weights_gb", "resident_weights_gb", "fp32_gb", "fp16_gb")
    }
    tera = {
        column: ".4g"
        for column in (
            "text_encoding_tflops",
            "denoising_tflops",
            "decode_tflops",
            "tflops_per_image",
            "tflops_per_step",
        )
    }
    formats = (
        number
        | gigabytes
        | tera
        | {
            "flops_ratio_to_first": ".2f",
            "image_values_per_step_value": ".0f",
            "gflops_per_call": ",.2f",
            "gflops_per_guided_call": ",.2f",
        }
    )
    return "\n".join(
        [
            *lines,
            "",
            "### Per pipeline",
            "",
            markdown_table(pipelines, formats),
            "### Per stage",
            "",
            markdown_table(stages, formats),
            "### Per component",
            "",
            markdown_table(components, formats),
        ]
    )


def write_profile(profile: Profile, settings: ProfileSettings, out: Path) -> str:
    """Write components / stages / pipelines tables (parquet + CSV) and profile.md; return the markdown."""

    ensure_writable(out)
    for name in ("components", "stages", "pipelines"):
        atomic_write_table(getattr(profile, name), out / name)
    markdown = render_profile(profile, settings)
    atomic_write_text(out / "profile.md", markdown)
    return markdown
