"""The report's document model and its two renderings.

A report is a list of sections made of three kinds of block (text, table, figure), rendered
to ``report.md`` (figures as relative links) and to ``index.html`` (figures embedded as data
URIs, every string HTML-escaped), so the page opens from disk with no server or network. An
interactive plot is drawn by Bokeh's inlined JavaScript in the page and shown as its static PNG
in the markdown.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from suite.analysis.report.interactive import embed, library_script
from suite.core.formatting import html_table, markdown_table


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    formats: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    path: Path  # inside the report folder
    caption: str


@dataclass(frozen=True)
class Interactive:
    """A plot the HTML page draws interactively (a Bokeh JSON item) and the markdown shows as ``static``."""

    name: str
    item: dict
    static: Figure


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


def markdown_inline(text: str) -> str:
    """User text (a prompt) as one line of inert markdown: whitespace runs collapsed, HTML and link syntax escaped."""
    text = html.escape(" ".join(text.split()), quote=False)
    for character in "\\[]*_`":
        text = text.replace(character, "\\" + character)
    return text


def inline_html(text: str) -> str:
    """Text with the report's inline markdown (``**bold**``, ```code```) as HTML, everything else escaped."""
    escaped = html.escape(text)
    escaped = re.sub(r"(?<!\\)\*\*(.+?)(?<!\\)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"(?<!\\)`([^`]+)`", r"<code>\1</code>", escaped)


def to_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}\n"]
    for section in sections:
        parts.append(f"## {section.title}\n")
        for block in section.blocks:
            if isinstance(block, Text):
                parts.append(block.text + "\n")
            elif isinstance(block, Table):
                parts.append(markdown_table(block.frame, block.formats))
            else:
                block = block.static if isinstance(block, Interactive) else block
                caption = markdown_inline(block.caption)
                parts.append(f"![{caption}]({block.path.as_posix()})\n\n*{caption}*\n")
    return "\n".join(parts)


def to_html(title: str, sections: list[Section], folder: Path) -> str:
    """One self-contained page: figures inlined as base64 PNG, every user string escaped."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Text):
                lines = "".join(f"<li>{inline_html(line.removeprefix('- '))}</li>" for line in block.text.splitlines())
                body.append(f"<ul>{lines}</ul>" if block.text.startswith("- ") else f"<p>{inline_html(block.text)}</p>")
            elif isinstance(block, Table):
                body.append(f'<div class="wide">{html_table(block.frame, block.formats)}</div>')
            elif isinstance(block, Interactive):
                caption = html.escape(block.static.caption)
                body.append(f"<figure>{embed(block.name, block.item)}<figcaption>{caption}</figcaption></figure>")
            else:
                data = base64.b64encode((folder / block.path).read_bytes()).decode("ascii")
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}">'
                    f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
                )
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
        "th{background:#f3f3f3}figure{display:inline-block;margin:1em}img{max-width:100%}"
        "figcaption{font-size:12px;max-width:520px}.wide{overflow-x:auto}code{font-size:90%}"
    )
    interactive = any(isinstance(block, Interactive) for section in sections for block in section.blocks)
    library = f"<script>{library_script()}</script>" if interactive else ""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style>{library}</head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
