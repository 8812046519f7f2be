"""Prompt sets: built-in lists, or a .txt / .csv / .jsonl file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from suite.errors import UserError
from suite.registry import Registry
from suite.toy.world import evaluation_prompts

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


def _csv_prompts(path: Path, text: str) -> list[str]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is not None and "prompt" not in reader.fieldnames:
        raise UserError(f"{path}: a CSV prompt file needs a 'prompt' column, found {reader.fieldnames}")
    prompts = []
    for row in reader:
        if row.get("prompt") is None:
            raise UserError(f"{path}:{reader.line_num}: the row has no 'prompt' field")
        prompts.append(row["prompt"].strip())
    return prompts


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per line (.txt), a 'prompt' column (.csv), or a 'prompt' field per line (.jsonl)."""
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
                prompts.append(str(json.loads(line)["prompt"]).strip())
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: expected a JSON object with a 'prompt' field") from None
    else:
        raise UserError(f"{path}: prompt files must be .txt, .csv or .jsonl")
    return [prompt for prompt in prompts if prompt]
