"""Tidy tables rendered as text: GitHub markdown and HTML, deterministic for a given frame.

One cell formatter serves both, so a number reads the same in ``report.md`` and ``index.html``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import pandas as pd


def format_cell(value: object, spec: str | None = None) -> str:
    """A table cell: empty for missing values, ``spec`` if given, 4 significant digits for other floats."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if spec is not None:
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> str:
    """A markdown table of ``frame`` (columns in order); ``formats`` maps columns to format specs."""
    formats = formats or {}
    header = "| " + " | ".join(str(column) for column in frame.columns) + " |"
    numeric = [pd.api.types.is_numeric_dtype(frame[column]) for column in frame.columns]
    rule = "|" + "|".join("---:" if is_numeric else "---" for is_numeric in numeric) + "|"
    rows = [
        "| "
        + " | ".join(
            format_cell(value, formats.get(column)).replace("|", "\\|") for column, value in zip(frame.columns, row)
        )
        + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows]) + "\n"


def html_table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> str:
    """An HTML table of ``frame``, every cell escaped."""
    formats = formats or {}
    header = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    rows = [
        "<tr>"
        + "".join(
            f"<td>{html.escape(format_cell(value, formats.get(column)))}</td>"
            for column, value in zip(frame.columns, row)
        )
        + "</tr>"
        for row in frame.itertuples(index=False)
    ]
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
