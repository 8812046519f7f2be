"""Two runs of one sweep on different hardware or dtypes: are they the same images? ``suite diff A B``.

Images are paired by what determines them (preset, sampler, steps, guidance, prompt, seed). Per
grid point: the share of byte-identical PNGs (sha256, with a Wilson interval at the effective sample
size), the largest and mean absolute pixel difference (0-255), and for every per-image score both runs
hold (CLIP score, the toy world's answers) the paired difference B - A with its interval and test, both
at the unit of the prompt.

Example:
    >>> table = diff_runs(Path("results/toy-cpu"), Path("results/toy-cuda"))
    >>> table[["preset", "guidance_scale", "sha256_match", "max_pixel_difference"]]
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from suite.core.errors import UserError
from suite.core.files import sha256_bytes
from suite.core.paired import paired_binary, paired_permutation
from suite.core.stats import Units, share_interval
from suite.metrics import METRICS
from suite.run.folder import GRID_COLUMNS, read_run

PAIR_COLUMNS = [*GRID_COLUMNS, "prompt_index", "seed_index"]


def _images(run: Path) -> pd.DataFrame:
    folder = read_run(run)
    if folder.samples is None:
        raise UserError(f"{run} has no samples.parquet: finish the sweep first")
    return folder.images().set_index(PAIR_COLUMNS)


def _pixels(run: Path, relative: str, recorded: str) -> np.ndarray:
    """The image's pixels, after checking its file against the sha256 its run recorded (a replaced, missing or
    truncated PNG is one line, never a comparison of other bytes than the table says)."""
    path = run / relative
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: {error.strerror or error}; `suite check {run}` lists what is damaged") from None
    if sha256_bytes(data) != recorded:
        raise UserError(f"{path} does not match its recorded sha256; `suite sweep` with the run's sweep regenerates it")
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def diff_runs(a: Path, b: Path) -> pd.DataFrame:
    """One row per grid point of A and B: sha256 agreement, pixel differences, paired score differences."""
    first, second = _images(a), _images(b)
    common = first.index.intersection(second.index)
    if len(common) == 0:
        raise UserError(f"{a} and {b} share no images (different sweeps?)")
    first, second = first.loc[common], second.loc[common]
    scores = [
        column
        for column in first.columns
        if column in second.columns
        and any(metric.owns_image_score(column) for metric in METRICS.values())
        and pd.api.types.is_numeric_dtype(first[column])
    ]
    rows = []
    for point, left in first.groupby(level=list(GRID_COLUMNS), sort=True):
        right = second.loc[left.index]
        same = int((left["sha256"] == right["sha256"]).sum())
        differences = [
            np.abs(_pixels(a, x, sha_x) - _pixels(b, y, sha_y))
            for x, sha_x, y, sha_y in zip(left["image_path"], left["sha256"], right["image_path"], right["sha256"])
        ]
        units = Units.of(left.index.get_level_values("prompt_index").to_numpy())
        interval = share_interval((left["sha256"] == right["sha256"]).to_numpy(dtype=np.float64), units)
        row = dict(zip(GRID_COLUMNS, point)) | {
            "images": len(left),
            "prompts": units.count,
            "sha256_match": same / len(left),
            "sha256_match_ci95_low": interval.low,
            "sha256_match_ci95_high": interval.high,
            "max_pixel_difference": int(max(difference.max() for difference in differences)),
            "mean_pixel_difference": float(np.mean([difference.mean() for difference in differences])),
            "images_within_1": float(np.mean([difference.max() <= 1 for difference in differences])),
        }
        for column in scores:
            binary = any(metric.image_score_is_binary(column) for metric in METRICS.values())
            test = (paired_binary if binary else paired_permutation)(left[column], right[column], units)
            row |= {
                f"{column}_a": float(left[column].mean()),
                f"{column}_b": float(right[column].mean()),
                f"{column}_difference": test.difference,
                f"{column}_difference_ci95_low": test.low,
                f"{column}_difference_ci95_high": test.high,
                f"{column}_p": test.p_value,
            }
        rows.append(row)
    return pd.DataFrame(rows)
