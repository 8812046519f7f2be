"""Claim 8, time per step on a GPU: SD 1.5's UNet step at 512 px, from `suite bench` tables measured on GPUs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from suite.analysis.bench.summary import upgraded
from suite.analysis.claims.claim_file import ClaimConfig
from suite.analysis.claims.common import NOT_RUN, NOT_SUPPORTED, PARTLY, SUPPORTED, ClaimsOptions, claim_section
from suite.analysis.claims.experiments import EXPERIMENTS, Experiment, Judgement
from suite.analysis.report.render import Table, Text


def measure_step_time(config: ClaimConfig, runs: dict, options: ClaimsOptions) -> dict[str, pd.DataFrame]:
    settings = config.settings
    rows = []
    for path in settings.get("bench_tables", []):
        path = Path(path)
        if not path.is_file():
            continue
        table = upgraded(pd.read_csv(path))  # a bench table of any version, in seconds
        wanted = table[(table["preset"] == settings["preset"]) & (table["stage"] == settings["stage"])]
        rows.extend(
            {
                "source": path.as_posix(),
                "device_name": row.device_name,
                "dtype": row.dtype,
                "batch_size": row.batch_size,
                "compile": row.compile,
                "step_median_s": row.step_median_s,
                "step_q1_s": row.step_q1_s,
                "step_q3_s": row.step_q3_s,
                "consumer_gpu": any(marker in row.device_name for marker in settings.get("consumer_markers", [])),
            }
            for row in wanted.itertuples()
        )
    columns = [
        "source",
        "device_name",
        "dtype",
        "batch_size",
        "compile",
        "step_median_s",
        "step_q1_s",
        "step_q3_s",
        "consumer_gpu",
    ]
    return {"bench": pd.DataFrame(rows, columns=columns)}


def judge_step_time(claim: dict, rules: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Judged only from a consumer GPU's bench table: supported if its median ms/step lies in the claimed range."""
    bench = tables["bench"]
    low, high = rules["claimed_ms"]
    consumer = bench[bench.consumer_gpu.astype(bool)] if len(bench) else bench
    if len(consumer) == 0:
        verdict = NOT_RUN
    else:
        inside = (1e3 * consumer.step_median_s).between(low, high)
        verdict = SUPPORTED if inside.all() else (NOT_SUPPORTED if not inside.any() else PARTLY)
    # the table stores seconds; the claim and its report read in milliseconds
    milliseconds = {"step_median_s": "step_ms_median", "step_q1_s": "step_ms_q1", "step_q3_s": "step_ms_q3"}
    shown = bench.assign(**{column: 1e3 * bench[column] for column in milliseconds}).rename(columns=milliseconds)
    numbers = (
        "; ".join(
            f"{row.device_name} {row.dtype}{' compiled' if row.compile else ''}: {row.step_ms_median:.1f} ms/step [IQR {row.step_ms_q1:.1f}, {row.step_ms_q3:.1f}]"
            for row in shown.itertuples()
        )
        or "no bench table"
    )
    blocks = [
        Text(
            "The claim is about consumer GPUs; no consumer GPU was measured, so the verdict waits for one "
            "(the claim file gives the command). What was measured, SD 1.5's UNet at 512 px, batch 1, guided "
            "(two evaluations per step), median and interquartile range of the steps:"
            if verdict == NOT_RUN
            else f"SD 1.5's UNet at 512 px, batch 1, guided; the claim's range is {low}-{high} ms per step."
        ),
        Table(
            shown.drop(columns=["consumer_gpu"]), {"step_ms_median": ".1f", "step_ms_q1": ".1f", "step_ms_q3": ".1f"}
        ),
    ]
    return Judgement(verdict, numbers, claim_section(claim, blocks))


EXPERIMENTS.register(
    "step-time",
    Experiment(
        measure_step_time,
        {"step-time/v1": judge_step_time},
        "ms per denoising step at 512 px from `suite bench` tables, where a GPU measured them",
    ),
)
