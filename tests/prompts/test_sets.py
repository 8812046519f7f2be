"""The field's prompt sets ship with their licences and filter by their metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite.core.errors import UserError
from suite.prompts.sets import DATA, PROMPT_SETS, filtered_prompts, prompt_records
from suite.run.config import parse_sweep, resolve


def _resolve(prompts: dict) -> tuple[str, ...]:
    sweep = {"presets": ["toy-latent"], "samplers": ["ddim"], "steps": [2], "guidance": [1.0], "prompts": prompts}
    return resolve(parse_sweep(sweep), Path(".")).prompt_texts


def test_partiprompts_and_geneval_are_complete_with_their_licences():
    assert len(PROMPT_SETS.get("parti")) == 1632 and len(PROMPT_SETS.get("geneval")) == 553
    for folder, licence in (("parti", "Apache License"), ("geneval", "MIT License")):
        assert licence in (DATA / folder / "LICENSE").read_text()
        assert "Source:" in (DATA / folder / "README.md").read_text()
    records = prompt_records("geneval")
    assert records["a photo of a bench"]["include"] == [{"class": "bench", "count": 1}]


def test_filters_select_by_metadata_in_the_sets_order():
    complex_prompts = _resolve({"set": "parti", "challenge": "Complex"})
    assert len(complex_prompts) == 113
    assert all(prompt_records("parti")[prompt]["challenge"] == "Complex" for prompt in complex_prompts)
    both = _resolve({"set": "geneval", "tag": ["two_object", "counting"]})
    assert len(both) == 99 + 80
    order = list(PROMPT_SETS.get("geneval"))
    assert [order.index(prompt) for prompt in both] == sorted(order.index(prompt) for prompt in both)
    assert _resolve({"set": "parti", "category": "Animals", "challenge": "Basic", "limit": 5}) == tuple(
        filtered_prompts("parti", {"category": ("Animals",), "challenge": ("Basic",)})[:5]
    )


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"set": "parti", "challenge": "Nope"}, "has no challenge 'Nope'; valid: Basic, Complex"),
        ({"set": "toy", "tag": "two_object"}, "cannot be filtered by 'tag'"),
        ({"list": ["a cat"], "tag": "two_object"}, "apply to a built-in set"),
    ],
)
def test_bad_filters_are_one_line(prompts, message):
    with pytest.raises(UserError, match=message) as error:
        _resolve(prompts)
    assert "\n" not in str(error.value)
