"""The HTML report's interactive plots (Bokeh): hover a grid point for its settings, its numbers with their 95%
intervals and a thumbnail of its first image.

Bokeh's JavaScript is inlined once per page (its core library only, about 1.3 MB), so the page stays one file that
opens offline. Model ids are renumbered in order of appearance, so building a report twice gives the same bytes.
The markdown report shows the static PNG of the same plot (``plots``).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pandas as pd
from bokeh.embed import json_item
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.resources import Resources

from suite.analysis.report.grids import thumbnail
from suite.analysis.report.tables import interval_of, quality_column
from suite.run.folder import GRID_COLUMNS

LIBRARY = Resources(mode="inline", components=["bokeh"])
TOOLS = "pan,wheel_zoom,box_zoom,reset"
COST = "seconds_per_image_median"
TOOLTIP = """<div style="width:230px">
<img src="@thumbnail" width="96" height="96" style="float:right;margin-left:6px;image-rendering:pixelated">
<b>@preset</b><br>@sampler, @steps steps, guidance @guidance<br>
{label}: @y{{0.000}} [@y_low{{0.000}}, @y_high{{0.000}}]<br>
s/image: @seconds{{0.0000}} [@seconds_low{{0.0000}}, @seconds_high{{0.0000}}]<br>@gflops
</div>"""


def library_script() -> str:
    """Bokeh's core JavaScript, to inline once in the page's head."""
    return "\n".join(LIBRARY.js_raw)


def _thumbnail_uri(run: Path, samples: pd.DataFrame, row: pd.Series) -> str:
    rows = samples[(samples[list(GRID_COLUMNS)] == row[list(GRID_COLUMNS)].values).all(axis=1)]
    if rows.empty:
        return ""
    first = rows.sort_values(["prompt_index", "seed_index"]).iloc[0]
    buffer = io.BytesIO()
    thumbnail(run / first["image_path"]).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _numbers(values) -> list[float | None]:
    """A column as JSON numbers: a missing value is null (BokehJS draws nothing there)."""
    return [None if pd.isna(value) else float(value) for value in values]


def _source(run: Path, samples: pd.DataFrame, group: pd.DataFrame, x: str, y: str) -> ColumnDataSource:
    (y_low, y_high), (x_low, x_high), (cost_low, cost_high) = interval_of(y), interval_of(x), interval_of(COST)
    gflops = group["gflops_per_image"] if "gflops_per_image" in group else pd.Series(float("nan"), index=group.index)
    return ColumnDataSource(
        {
            "x": _numbers(group[x]),
            "y": _numbers(group[y]),
            "y_low": _numbers(group[y_low] if y_low in group else group[y]),
            "y_high": _numbers(group[y_high] if y_high in group else group[y]),
            "x_low": _numbers(group[x_low] if x_low in group else group[x]),
            "x_high": _numbers(group[x_high] if x_high in group else group[x]),
            "preset": group["preset"].tolist(),
            "sampler": group["sampler"].tolist(),
            "steps": group["num_inference_steps"].astype(int).tolist(),
            "guidance": [f"{value:g}" for value in group["guidance_scale"]],
            "seconds": _numbers(group[COST]),
            "seconds_low": _numbers(group[cost_low] if cost_low in group else group[COST]),
            "seconds_high": _numbers(group[cost_high] if cost_high in group else group[COST]),
            "gflops": ["" if pd.isna(value) else f"{value:,.4g} GFLOPs/image" for value in gflops],
            "thumbnail": [_thumbnail_uri(run, samples, row) for _, row in group.iterrows()],
        }
    )


def _plot(run: Path, samples: pd.DataFrame, metrics: pd.DataFrame, x: str, x_label: str, log_x: bool, sort: str):
    """One line per preset x sampler with 95% whiskers on y (and on x where it has an interval)."""
    y, _ = quality_column(metrics)
    plot = figure(
        width=640,
        height=420,
        x_axis_type="log" if log_x else "linear",
        tools=TOOLS,
        toolbar_location="above",
        x_axis_label=x_label,
        y_axis_label=f"{y} (95% CI)",
    )
    points = []
    for index, ((preset, sampler), group) in enumerate(metrics.groupby(["preset", "sampler"], sort=False)):
        group = group[group[y].notna() & group[x].notna()].sort_values(sort)
        if group.empty:
            continue
        colour = Category10_10[index % len(Category10_10)]
        source = _source(run, samples, group, x, y)
        plot.line("x", "y", source=source, color=colour, legend_label=f"{preset} / {sampler}")
        points.append(plot.scatter("x", "y", source=source, color=colour, size=8))
        # error bars as segments (glyphs, so the axes' automatic ranges include the intervals)
        plot.segment("x", "y_low", "x", "y_high", source=source, color=colour, line_width=1.5)
        if x == COST:
            plot.segment("x_low", "y", "x_high", "y", source=source, color=colour, line_width=1.5)
    plot.add_tools(HoverTool(renderers=points, tooltips=TOOLTIP.format(label=y)))
    plot.legend.location = "top_right"
    plot.legend.label_text_font_size = "8pt"
    plot.legend.click_policy = "hide"
    return plot


def quality_vs_cost(run: Path, samples: pd.DataFrame, metrics: pd.DataFrame) -> dict | None:
    """Quality against measured seconds per image (log axis), every grid point, lines in order of cost."""
    if quality_column(metrics) is None or COST not in metrics:
        return None
    return _item(_plot(run, samples, metrics, COST, "seconds per image (median, 95% CI, log)", True, COST))


def quality_vs_guidance(run: Path, samples: pd.DataFrame, metrics: pd.DataFrame) -> dict | None:
    """Quality against guidance at the sweep's largest step count, one line per preset x sampler."""
    if quality_column(metrics) is None:
        return None
    steps = metrics["num_inference_steps"].max()
    at_steps = metrics[metrics["num_inference_steps"] == steps]
    plot = _plot(run, samples, at_steps, "guidance_scale", f"guidance scale ({steps} steps)", False, "guidance_scale")
    return _item(plot)


def _item(plot) -> dict:
    """The plot as Bokeh's embeddable JSON, with its ids renumbered in order of appearance (reproducible bytes)."""
    item = json_item(plot)
    ids: dict[str, str] = {}

    def renumber(value):
        if isinstance(value, dict):
            return {
                key: ids.setdefault(inner, f"m{len(ids) + 1}")
                if key in ("id", "root_id") and isinstance(inner, str)
                else renumber(inner)
                for key, inner in value.items()
            }
        if isinstance(value, list):
            return [renumber(inner) for inner in value]
        return value

    return renumber(item)


def embed(name: str, item: dict) -> str:
    """A div and the script that draws ``item`` into it; the JSON sits in a data block with ``<``, ``>`` and ``&``
    written as JSON escapes, so no string in it can end the script or open a comment."""
    data = (
        json.dumps(item, separators=(",", ":"), allow_nan=False)  # in order: models are defined before referenced
        .replace("<", "\\u003c")  # JSON escapes: no string can end the script or open a comment
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return (
        f'<div id="{name}" class="interactive"></div>'
        f'<script type="application/json" id="{name}-data">{data}</script>'
        f'<script>Bokeh.embed.embed_item(JSON.parse(document.getElementById("{name}-data").textContent), "{name}");'
        "</script>"
    )
