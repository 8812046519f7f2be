"""Grid expansion: stable ids, per-image seeds, interleaved shards, per-stage settings."""

from __future__ import annotations

from suite.model.stages import StageSettings
from suite.run.config import parse_sweep, resolve
from suite.run.grid import expand, image_seed, shard


def resolved(**changes):
    data = {
        "presets": ["tiny-latent", "tiny-cascaded"],
        "samplers": ["ddim", "heun"],
        "steps": [5, 10],
        "guidance": [1.0, 7.5],
        "seeds_per_prompt": 2,
        "batch_size": 3,
        "seed": 4,
        "prompts": {"list": ["a", "b", "c"]},
    }
    data.update(changes)
    return resolve(parse_sweep(data), base_dir=None)


def test_grid_size_and_unique_stable_ids():
    items = expand(resolved())
    assert len(items) == 2 * 2 * 2 * 2 * 2  # 16 grid points x 2 blocks of 3 images (6 images each)
    assert sum(len(item.images) for item in items) == 16 * 6
    assert len({item.id for item in items}) == len(items)
    assert [item.id for item in expand(resolved())] == [item.id for item in items]


def test_item_ids_change_with_any_resolved_field():
    base = expand(resolved())
    assert {item.id for item in base}.isdisjoint(item.id for item in expand(resolved(seed=5)))
    # Changing the third prompt changes the blocks holding it (p2) and keeps the others.
    changed = expand(resolved(prompts={"list": ["a", "b", "d"]}))
    for before, after in zip(base, changed):
        holds_third_prompt = any(image.prompt_index == 2 for image in before.images)
        assert (before.id != after.id) == holds_third_prompt


def test_seeds_depend_only_on_sweep_seed_prompt_and_seed_index():
    seeds_3 = {(i.prompt_index, i.seed_index): i.seed for item in expand(resolved(batch_size=3)) for i in item.images}
    seeds_1 = {(i.prompt_index, i.seed_index): i.seed for item in expand(resolved(batch_size=1)) for i in item.images}
    assert seeds_3 == seeds_1
    assert seeds_3[(1, 0)] == image_seed(4, 1, 0) != image_seed(4, 0, 1)
    assert len(set(seeds_3.values())) == 6


def test_shards_interleave_and_cover_everything_once():
    items = expand(resolved())
    parts = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(item.id for part in parts for item in part) == sorted(item.id for item in items)
    assert parts[1][0] is items[1] and parts[1][1] is items[4]


def test_stage_settings_follow_grid_then_preset_defaults_then_overrides():
    sweep = resolved(stages={"tiny-cascaded": {"super_resolution_1": {"steps": 3, "sampler": "ddpm"}}})
    cascade = next(
        item
        for item in expand(sweep)
        if item.preset == "tiny-cascaded"
        and item.sampler == "heun"
        and item.num_inference_steps == 10
        and item.guidance_scale == 7.5
    )
    assert cascade.stages == (StageSettings("heun", 10, 7.5, None), StageSettings("ddpm", 3, 4.0, 250))
