"""The toy world: deterministic scenes, a caption grammar that round-trips, and an exact score validated on it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from suite.toy import world
from suite.toy.score import detect, relation_between, score_image, score_prompt_image


def test_world_has_every_caption_once_and_holds_out_a_tenth_of_the_pairs():
    captions = world.all_captions()
    texts = [caption.text for caption in captions]
    assert len(texts) == len(set(texts)) == 12 + 12 * 11 * 4
    held_out = [caption for caption in captions if caption.held_out]
    pairs = [caption for caption in captions if caption.relation]
    assert all(caption.relation for caption in held_out) and 0.05 < len(held_out) / len(pairs) < 0.15
    singles, training_pairs = world.training_captions()
    assert len(singles) == 12 and not set(held_out) & set(training_pairs)


def test_captions_parse_back_and_other_text_does_not():
    for caption in world.all_captions():
        assert world.parse_caption(caption.text) == caption
    assert world.parse_caption("A Red Circle.") == world.Caption((world.Thing("red", "circle"),))
    for text in ("a photo of a cat", "a red circle above a red circle", "a purple circle", ""):
        assert world.parse_caption(text) is None


def test_scenes_are_determined_by_the_seed():
    first, captions = world.sample_batch(seed=7, count=8)
    again, captions_again = world.sample_batch(seed=7, count=8)
    other, _ = world.sample_batch(seed=8, count=8)
    assert captions == captions_again and np.array_equal(first, again) and not np.array_equal(first, other)
    assert first.shape == (8, 64, 64, 3) and first.dtype == np.uint8


def test_training_batches_never_show_held_out_captions():
    _, captions = world.sample_batch(seed=3, count=2000)
    assert not any(world.parse_caption(text).held_out for text in captions)
    assert 0.2 < np.mean([world.parse_caption(text).relation is None for text in captions]) < 0.3


def test_layouts_satisfy_their_relation():
    rng = np.random.default_rng(0)
    for caption in world.all_captions()[12:200]:
        first, second = world.layout(caption, rng)
        assert world._relation_holds(caption.relation, first, second)


def test_evaluation_prompts_cover_singles_every_relation_binding_swaps_and_held_out_pairs():
    prompts = world.evaluation_prompts()
    assert len(prompts) == len(set(prompts)) == 64
    categories = pd.Series([world.prompt_category(prompt) for prompt in prompts]).value_counts()
    assert categories["single"] == 12 and categories["pair"] == 32 and categories["held-out pair"] == 20
    relations = {world.parse_caption(prompt).relation for prompt in prompts}
    assert relations == {None, *world.RELATIONS}
    swapped = [world.parse_caption(prompt) for prompt in prompts[36:44]]
    for first, second in zip(swapped[::2], swapped[1::2]):
        assert [thing.shape for thing in first.things] == [thing.shape for thing in second.things]
        assert [thing.colour for thing in first.things] == [thing.colour for thing in second.things][::-1]


def test_score_is_at_least_98_percent_on_every_question_for_the_worlds_own_images():
    rng = np.random.default_rng(11)
    captions = world.all_captions() * 2
    scores = pd.DataFrame([score_image(world.draw_caption(caption, rng), caption) for caption in captions])
    accuracy = scores.mean()  # relation: mean over pairs (NaN for singles is skipped)
    assert (accuracy >= 0.98).all(), accuracy.to_dict()


def test_score_catches_wrong_colour_shape_count_and_relation():
    rng = np.random.default_rng(12)
    caption = world.parse_caption("a red circle above a blue square")
    image = world.draw_caption(caption, rng)
    assert score_image(image, caption)["correct"] == 1.0
    swapped = world.parse_caption("a blue circle above a red square")
    assert score_image(image, swapped)["binding"] == 0.0 and score_image(image, swapped)["colour"] == 1.0
    below = world.parse_caption("a red circle below a blue square")
    assert score_image(image, below)["binding"] == 1.0 and score_image(image, below)["relation"] == 0.0
    single = world.parse_caption("a red circle")
    assert score_image(image, single)["count"] == 0.0
    blank = np.full((64, 64, 3), world.BACKGROUND, dtype=np.uint8)
    assert detect(blank) == [] and score_image(blank, single)["correct"] == 0.0
    assert np.isnan(score_prompt_image(image, "a photo of a cat")["correct"])


def test_relation_reads_image_coordinates():
    from suite.toy.score import DetectedObject

    top = DetectedObject("red", "circle", 100, 0.78, (32.0, 10.0))
    bottom = DetectedObject("blue", "square", 100, 1.0, (30.0, 50.0))
    right = DetectedObject("green", "triangle", 100, 0.5, (60.0, 12.0))
    assert relation_between(top, bottom) == "above" and relation_between(bottom, top) == "below"
    assert relation_between(top, right) == "left of" and relation_between(right, top) == "right of"


def test_a_killed_training_recipe_resumes_to_the_same_weights(tmp_path):
    """Two steps, checkpoint, a fresh process state, two more steps == four steps straight."""
    from suite.toy import train

    recipe = replace(train.RECIPES["vae"], iterations=4, batch_size=2, checkpoint_every=2, log_every=2, warmup=2)
    straight = train.run_recipe(recipe, tmp_path / "straight", log=lambda line: None)
    train.run_recipe(replace(recipe, iterations=2), tmp_path / "resumed", log=lambda line: None)
    (tmp_path / "resumed" / "vae" / "summary.json").unlink()  # as if the run had been killed after step 2
    resumed = train.run_recipe(recipe, tmp_path / "resumed", log=lambda line: None)
    assert straight["images_seen"] == resumed["images_seen"] == 8
    from diffusers import AutoencoderKL

    a = AutoencoderKL.from_pretrained(tmp_path / "straight" / "vae" / "final" / "vae")
    b = AutoencoderKL.from_pretrained(tmp_path / "resumed" / "vae" / "final" / "vae")
    for (name, left), right in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(left, right), name
