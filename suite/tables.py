"""Plain-text renderings of tidy tables: GitHub markdown, deterministic for a given frame."""

from __future__ import annotations

from typing import Mapping

import pandas as pd


def _cell(value: object, spec: str | None) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if spec is not None:
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> str:
    """A markdown table of ``frame`` (columns in order); ``formats`` maps columns to format specs."""
    formats = formats or {}
    header = "| " + " | ".join(str(column) for column in frame.columns) + " |"
    numeric = [pd.api.types.is_numeric_dtype(frame[column]) for column in frame.columns]
    rule = "|" + "|".join("---:" if is_numeric else "---" for is_numeric in numeric) + "|"
    rows = [
        "| " + " | ".join(_cell(value, formats.get(column)) for column, value in zip(frame.columns, row)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows]) + "\n"
