"""Profiles of the real architectures from their public configs (meta device, no weights)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from suite.analysis.costs import ProfileSettings, profile_presets
from suite.cli import main
from suite.model.backends import build_on_meta
from suite.model.presets import PRESETS


@pytest.fixture(scope="module")
def real_profile():
    return profile_presets(["sd15", "sd21-base", "if-xl"], ProfileSettings("ddim", 50, 7.5))


def _parameters(profile, preset: str, component: str) -> int:
    rows = profile.components
    return int(rows[(rows.preset == preset) & (rows.component == component)].parameters.iloc[0])


# Published totals and the unit of their last digit: "860M UNet", "123M text encoder", "4.3B".
PUBLISHED = [
    ("sd15", "latent:unet", 860e6, 1e6),
    ("sd15", "text_encoder:clip", 123e6, 1e6),
    ("sd21-base", "latent:unet", 865e6, 1e6),
    ("if-xl", "base:unet", 4.3e9, 0.1e9),
    ("if-xl", "super_resolution_1:unet", 1.2e9, 0.1e9),
]


@pytest.mark.parametrize("preset, component, published, unit", PUBLISHED)
def test_parameter_counts_match_the_published_totals(real_profile, preset, component, published, unit):
    assert abs(_parameters(real_profile, preset, component) - published) < unit


def test_t5_shared_embedding_is_counted_once(real_profile):
    """T5-XXL's encoder; accelerate's init_empty_weights would count the tied embedding twice (4,893,906,944)."""
    assert _parameters(real_profile, "if-xl", "text_encoder:t5") == 4_762_310_656


def test_values_per_step_latent_against_pixel(real_profile):
    stages = real_profile.stages.set_index(["preset", "stage"])
    sd = stages.loc[("sd15", "latent")]
    assert (sd["sample"], sd["values_per_step"], sd["image_values"]) == ("64x64x4", 16_384, 786_432)
    assert sd["image_values_per_step_value"] == 48
    assert stages.loc[("if-xl", "base"), "values_per_step"] == 64 * 64 * 3
    assert stages.loc[("if-xl", "super_resolution_1"), "values_per_step"] == 256 * 256 * 3
    assert stages.loc[("if-xl", "super_resolution_2"), "sample"] == "256x256x4"
    assert stages.loc[("if-xl", "super_resolution_2"), "image"] == "1024x1024x3"


def test_pipeline_totals_add_up(real_profile):
    for row in real_profile.pipelines.itertuples():
        stages = real_profile.stages[real_profile.stages.preset == row.preset]
        assert row.tflops_per_image == pytest.approx(row.text_encoding_tflops + stages.tflops_per_image.sum())
        components = real_profile.components[real_profile.components.preset == row.preset]
        assert row.parameters == components.parameters.sum()
    ratios = real_profile.pipelines.set_index("preset")["flops_ratio_to_first"]
    assert ratios["sd15"] == 1.0 and ratios["if-xl"] > 5  # the cascade to 1024 px costs far more per image


def test_cfg_doubles_the_unet_cost(real_profile):
    unets = real_profile.components[real_profile.components.component.str.endswith(":unet")]
    assert list(unets.gflops_per_guided_call) == pytest.approx(list(2 * unets.gflops_per_call))


def test_offloaded_cascade_needs_only_its_largest_model_resident(real_profile):
    row = real_profile.pipelines.set_index("preset").loc["if-xl"]
    t5 = real_profile.components.query("preset == 'if-xl' and component == 'text_encoder:t5'").weights_gb.iloc[0]
    assert row.peak_resident_weights_gb == pytest.approx(t5)
    assert row.peak_resident_weights_gb < row.weights_gb


def test_a_local_folder_profiles_like_the_loaded_model(latent_folder, latent_pipeline):
    preset = replace(PRESETS.get("sd15"), local_dir=latent_folder)
    meta = build_on_meta(preset)
    assert all(p.is_meta for p in meta.stages[0].unet.parameters())
    for meta_module, real_module in [
        (meta.stages[0].unet, latent_pipeline.stages[0].unet),
        (meta.stages[0].vae, latent_pipeline.stages[0].vae),
        (meta.text_encoders["clip"].model, latent_pipeline.text_encoders["clip"].model),
    ]:
        assert sum(p.numel() for p in meta_module.parameters()) == sum(p.numel() for p in real_module.parameters())


def test_cli_profile_writes_tables_and_states_the_ratios(tmp_path, capsys):
    out = tmp_path / "profile"
    assert main(["profile", "sd15", "tiny-latent", "--steps", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "16,384 (48x fewer)" in printed and "x sd15" in printed
    pipelines = pd.read_csv(out / "pipelines.csv")
    assert list(pipelines.preset) == ["sd15", "tiny-latent"]
    assert (out / "profile.md").read_text() in printed


def test_cli_profile_of_a_preset_without_public_configs_is_one_line(tmp_path, capsys):
    out = tmp_path / "profile"
    assert main(["profile", "if-l", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--model-dir if-l=PATH" in error
    assert not out.exists()
