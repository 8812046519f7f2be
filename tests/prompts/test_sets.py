"""The field's prompt sets ship with their licences and filter by their metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite.core.errors import UserError
from suite.prompts.sets import DATA, PROMPT_SETS, filtered_prompts, prompt_records
from suite.run.config import parse_sweep, resolve
from suite.toy.world import all_captions, prompt_category


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


def test_toy_all_is_every_caption_of_the_grammar_once_in_a_shuffled_order():
    prompts = list(PROMPT_SETS.get("toy-all"))
    assert sorted(prompts) == sorted(caption.text for caption in all_captions()) and len(set(prompts)) == 540
    categories = [prompt_category(prompt) for prompt in prompts]
    assert {name: categories.count(name) for name in set(categories)} == {
        "single": 12,
        "pair": 463,
        "held-out pair": 65,
    }
    first = [prompt_category(prompt) for prompt in prompts[:270]]  # a prefix is a sample of every category
    assert 0.05 < first.count("held-out pair") / 270 < 0.20 and first.count("single") >= 2
