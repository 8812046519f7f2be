"""Image grids for the report: guidance x steps per preset and sampler; the families side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from suite.analysis.report.tables import quality_column
from suite.core.errors import UserError
from suite.model.presets import PRESETS

CELL = 96  # pixels per thumbnail side (small images are enlarged with nearest-neighbour, large ones reduced)
LABEL = 18
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


@dataclass(frozen=True)
class Grid:
    title: str
    path: Path


def thumbnail(path: Path) -> Image.Image:
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, SyntaxError) as error:  # missing, truncated or not an image
        raise UserError(
            f"{path} is missing or damaged ({type(error).__name__}); `suite check` lists the damage and "
            "`suite sweep` with the run's sweep regenerates it"
        ) from None
    resample = Image.NEAREST if image.width <= CELL else Image.LANCZOS
    return image.resize((CELL, CELL), resample)


def _labelled(cells: list[list[Path | None]], row_labels: list[str], column_labels: list[str]) -> Image.Image:
    """A grid of thumbnails with a label row on top and a label column on the left."""
    font = ImageFont.load_default()
    margin = 8 * max(len(label) for label in row_labels) + 8
    canvas = Image.new("RGB", (margin + CELL * len(column_labels), LABEL + CELL * len(row_labels)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for column, label in enumerate(column_labels):
        draw.text((margin + column * CELL + 4, 3), label, fill=INK, font=font)
    for row, label in enumerate(row_labels):
        draw.text((4, LABEL + row * CELL + CELL // 2 - 6), label, fill=INK, font=font)
        for column, path in enumerate(cells[row]):
            if path is not None:
                canvas.paste(thumbnail(path), (margin + column * CELL, LABEL + row * CELL))
    return canvas


def _path(run: Path, rows: pd.DataFrame) -> Path | None:
    return run / rows["image_path"].iloc[0] if len(rows) else None


def guidance_by_steps(
    run: Path, samples: pd.DataFrame, preset: str, sampler: str, prompt_index: int, seed_index: int = 0
) -> Image.Image:
    """Rows = guidance scales, columns = step counts, for one prompt and seed."""
    chosen = samples[
        (samples.preset == preset)
        & (samples.sampler == sampler)
        & (samples.prompt_index == prompt_index)
        & (samples.seed_index == seed_index)
    ]
    guidance = sorted(chosen["guidance_scale"].unique())
    steps = sorted(chosen["num_inference_steps"].unique())
    cells = [
        [_path(run, chosen[(chosen.guidance_scale == g) & (chosen.num_inference_steps == s)]) for s in steps]
        for g in guidance
    ]
    return _labelled(cells, [f"guidance {g:g}" for g in guidance], [f"{s} steps" for s in steps])


def families_side_by_side(
    run: Path,
    samples: pd.DataFrame,
    sampler: str,
    steps: int,
    guidance: float,
    prompt_indices: list[int],
    seed_index: int = 0,
) -> Image.Image:
    """Rows = prompts, columns = presets: the same prompt and seed through each architecture."""
    presets = list(dict.fromkeys(samples["preset"]))
    chosen = samples[
        (samples.sampler == sampler)
        & (samples.num_inference_steps == steps)
        & (samples.guidance_scale == guidance)
        & (samples.seed_index == seed_index)
    ]
    cells = [
        [_path(run, chosen[(chosen.preset == preset) & (chosen.prompt_index == index)]) for preset in presets]
        for index in prompt_indices
    ]
    return _labelled(cells, [f"prompt {index}" for index in prompt_indices], presets)


def point_grid(run: Path, rows: pd.DataFrame, prompts: int = 4, seeds: int = 4) -> Image.Image:
    """One grid point's images: rows = its first ``prompts`` prompts (labelled by index), columns = seeds."""
    indices = sorted(rows["prompt_index"].unique())[:prompts]
    seed_indices = sorted(rows["seed_index"].unique())[:seeds]
    cells = [
        [_path(run, rows[(rows.prompt_index == index) & (rows.seed_index == seed)]) for seed in seed_indices]
        for index in indices
    ]
    return _labelled(cells, [f"p{index}" for index in indices], [f"seed {seed}" for seed in seed_indices])


def headline_point(samples: pd.DataFrame, metrics: pd.DataFrame | None, guidance: float) -> tuple[str, int]:
    """The (sampler, steps) the side-by-side grid shows: at ``guidance``, the point whose worse family is best
    by the run's first quality metric, so a configuration where one family fails is never the headline.
    Without metrics: the first sampler at the most steps."""

    fallback = (samples["sampler"].iloc[0], int(samples["num_inference_steps"].max()))
    chosen = quality_column(metrics) if metrics is not None else None
    if chosen is None:
        return fallback
    column, lower_is_better = chosen
    at = metrics[metrics["guidance_scale"] == guidance].dropna(subset=[column])
    if at.empty:
        return fallback
    signed = -at[column] if lower_is_better else at[column]
    worst = signed.groupby([at["sampler"], at["num_inference_steps"]]).min()
    sampler, steps = max(worst.index, key=lambda key: (worst[key], key[1], key[0]))
    return sampler, int(steps)


def _family(preset: str) -> str:
    """A preset's family as the report names it: its backend ("latent", "cascaded", "unclip"), or the name itself
    for a preset this installation does not know (runs written before samples recorded the backend)."""
    return PRESETS.get(preset).backend if preset in PRESETS else preset


def write_grids(
    run: Path,
    samples: pd.DataFrame,
    folder: Path,
    guidance: float,
    prompts: int = 1,
    metrics: pd.DataFrame | None = None,
) -> list[Grid]:
    """Every grid of the report as PNG under ``folder``; titles name the prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    prompt_indices = sorted(samples["prompt_index"].unique())[:prompts]
    texts = samples.drop_duplicates("prompt_index").set_index("prompt_index")["prompt"]
    grids = []
    for preset in dict.fromkeys(samples["preset"]):
        for sampler in dict.fromkeys(samples[samples.preset == preset]["sampler"]):
            for index in prompt_indices:
                path = folder / f"{preset}_{sampler}_p{index:04d}.png"
                guidance_by_steps(run, samples, preset, sampler, index).save(path, optimize=True)
                grids.append(Grid(f"{preset} / {sampler} / prompt {index}: {texts[index]}", path))
    sampler, steps = headline_point(samples, metrics, guidance)
    path = folder / "families_side_by_side.png"
    families_side_by_side(run, samples, sampler, steps, guidance, prompt_indices).save(path, optimize=True)
    captions = "; ".join(f"prompt {index}: {texts[index]}" for index in prompt_indices)
    families = list(dict.fromkeys(samples["backend"] if "backend" in samples else samples["preset"].map(_family)))
    grids.insert(
        0,
        Grid(
            f"{' vs '.join(families)}, same prompt and seed ({sampler}, {steps} steps, guidance {guidance:g}). {captions}",
            path,
        ),
    )
    return grids
