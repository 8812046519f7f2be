"""Prompt sets: built-in lists, or a .txt / .csv / .jsonl file."""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path

from suite.core.errors import UserError
from suite.core.registry import Registry
from suite.toy.world import evaluation_prompts, every_prompt

PROMPT_SETS: Registry[tuple[str, ...]] = Registry("prompt set")
PROMPT_SETS.register(
    "tiny",
    (
        "a red circle",
        "a blue square",
        "a green triangle above a yellow circle",
        "a red circle left of a blue square",
        "a photo of a cat",
        "a painting of a horse",
        "an astronaut riding a horse",
        "a small house by a lake at sunset",
    ),
)
PROMPT_SETS.register(
    "toy",
    tuple(evaluation_prompts()),  # the toy world's: single objects, pairs per relation, binding swaps, held-out pairs
)
PROMPT_SETS.register("toy-all", tuple(every_prompt()))  # every caption of the toy grammar (540), shuffled
PROMPT_SETS.register(
    "showcase",
    (
        "a photograph of an astronaut riding a horse",
        "a red cube on top of a blue sphere",
        "a corgi wearing a party hat, studio lighting",
        "an oil painting of a lighthouse in a storm",
        "a bowl of ramen, overhead shot, 35mm film",
        "a street sign that says 'diffusion'",
        "two cats and one dog sitting on a sofa",
        "a watercolor map of an imaginary island",
    ),
)


DATA = Path(__file__).parent / "data"


@functools.cache
def parti_records() -> list[dict[str, str]]:
    """PartiPrompts (Yu et al. 2022; Apache-2.0, suite/prompts/data/parti/LICENSE): 1,632 prompts with Category and Challenge."""
    text = (DATA / "parti" / "PartiPrompts.tsv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    return [
        {"prompt": row["Prompt"].strip(), "category": row["Category"], "challenge": row["Challenge"]} for row in rows
    ]


@functools.cache
def geneval_records() -> list[dict]:
    """GenEval's prompts (Ghosh et al. 2023; MIT, suite/prompts/data/geneval/LICENSE): 553 prompts in six tasks (``tag``),
    each with the objects (class, count, colour, position) the image must and must not show."""
    text = (DATA / "geneval" / "evaluation_metadata.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


PROMPT_RECORDS = {"parti": parti_records, "geneval": geneval_records}  # sets whose prompts carry metadata
FILTERS = {"parti": ("category", "challenge"), "geneval": ("tag",)}  # metadata fields a sweep can filter on

PROMPT_SETS.register("parti", tuple(record["prompt"] for record in parti_records()))
PROMPT_SETS.register("geneval", tuple(record["prompt"] for record in geneval_records()))


def prompt_records(set_name: str) -> dict[str, dict]:
    """A set's metadata by prompt text (empty for sets without metadata). Records are read once per process and
    shared: treat them as read-only."""
    loader = PROMPT_RECORDS.get(set_name)
    return {} if loader is None else {record["prompt"]: record for record in loader()}


def check_filters(set_name: str, filters: dict[str, tuple[str, ...]]) -> None:
    """Each filter must be a field of the set, and each value one the set has; one-line UserError otherwise."""
    if not filters:
        return
    fields = FILTERS.get(set_name, ())
    records = PROMPT_RECORDS[set_name]() if fields else []
    for field_name, values in filters.items():
        if field_name not in fields:
            valid = ", ".join(f"{name} ({', '.join(keys)})" for name, keys in FILTERS.items())
            raise UserError(f"prompt set {set_name!r} cannot be filtered by {field_name!r}; filters: {valid}")
        known = sorted({record[field_name] for record in records})
        for value in values:
            if value not in known:
                raise UserError(f"prompt set {set_name!r} has no {field_name} {value!r}; valid: {', '.join(known)}")


def filtered_prompts(set_name: str, filters: dict[str, tuple[str, ...]]) -> list[str]:
    """The set's prompts, in order, whose metadata matches every filter (any of a filter's values)."""
    check_filters(set_name, filters)
    if not filters:
        return list(PROMPT_SETS.get(set_name))
    return [
        record["prompt"]
        for record in PROMPT_RECORDS[set_name]()
        if all(record[field_name] in values for field_name, values in filters.items())
    ]


def _csv_prompts(path: Path, text: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # a quoted field may hold a line break
    if reader.fieldnames is not None and "prompt" not in reader.fieldnames:
        raise UserError(f"{path}: a CSV prompt file needs a 'prompt' column, found {reader.fieldnames}")
    prompts = []
    for row in reader:
        if row.get("prompt") is None:
            raise UserError(f"{path}:{reader.line_num}: the row has no 'prompt' field")
        if not row["prompt"].strip():
            raise UserError(f"{path}:{reader.line_num}: the prompt is blank; remove the row")
        prompts.append(row["prompt"].strip())
    return prompts


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per line (.txt; blank lines are skipped), a 'prompt' column (.csv; quoted fields may span
    lines), or a 'prompt' field per line (.jsonl); a blank prompt in a .csv or .jsonl is an error."""
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first prompt
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); save the prompt file as UTF-8") from None
    if suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines()]
    elif suffix == ".csv":
        prompts = _csv_prompts(path, text)
    elif suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                prompt = str(json.loads(line)["prompt"]).strip()
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: expected a JSON object with a 'prompt' field") from None
            if not prompt:
                raise UserError(f"{path}:{number}: the prompt is blank; remove the line")
            prompts.append(prompt)
    else:
        raise UserError(f"{path}: prompt files must be .txt, .csv or .jsonl")
    return [prompt for prompt in prompts if prompt]
