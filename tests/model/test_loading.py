"""Presets load tiny saved models through the same code path as hub checkpoints."""

from __future__ import annotations

from dataclasses import replace

import pytest

from suite.core.errors import UserError
from suite.model.backends import BACKENDS
from suite.model.loading import check_available
from suite.model.presets import PRESETS, materialise
from suite.model.sources import Source
from tests.conftest import CPU_FP32


def test_if_xl_layout_loads_three_stages_with_their_own_encoders(cascade_pipeline):
    kinds = [
        (stage.name, stage.text_encoder, stage.vae is not None, stage.conditioning is not None)
        for stage in cascade_pipeline.stages
    ]
    assert kinds == [
        ("base", "t5", False, False),
        ("super_resolution_1", "t5", False, True),
        ("super_resolution_2", "clip:stage_3", True, True),
    ]
    assert cascade_pipeline.stages[0].sample_channels == 3 and cascade_pipeline.stages[0].unet.config.out_channels == 6
    assert cascade_pipeline.stages[2].sample_channels == 4 and cascade_pipeline.stages[2].scale_factor == 4


def test_every_registered_preset_names_a_known_backend_and_stage_kinds():
    from suite.model.backends.components import STAGE_KINDS

    for name, preset in PRESETS.items():
        assert preset.backend in BACKENDS, name
        assert all(spec.kind in STAGE_KINDS for spec in preset.stages), name
        assert {spec.source for spec in preset.stages} <= set(preset.sources), name


def test_multi_source_local_dir_maps_keys_to_subfolders(tmp_path):
    preset = replace(PRESETS.get("if-xl"), local_dir=tmp_path)
    assert preset.source_paths() == {key: tmp_path / key for key in ("stage_1", "stage_2", "stage_3")}
    assert replace(PRESETS.get("sd15"), local_dir=tmp_path).source_paths() == {"sd15": tmp_path}


def test_builtin_presets_build_once_into_the_cache_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv("SUITE_CACHE", str(tmp_path))
    preset = materialise(PRESETS.get("tiny-cascaded"))
    assert preset.local_dir == tmp_path / "presets" / "tiny-cascaded"
    stamp = (preset.local_dir / "stage_1" / "unet" / "config.json").stat().st_mtime_ns
    assert materialise(PRESETS.get("tiny-cascaded")).local_dir == preset.local_dir
    assert (preset.local_dir / "stage_1" / "unet" / "config.json").stat().st_mtime_ns == stamp
    pipeline = BACKENDS.get("cascaded").load(preset, CPU_FP32)
    assert [stage.name for stage in pipeline.stages] == ["base", "super_resolution_1"]


def test_weights_are_safetensors_only(latent_folder):
    files = {path.suffix for path in latent_folder.rglob("*") if path.is_file()}
    assert ".safetensors" in files and ".bin" not in files


def test_unreachable_hub_source_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset = replace(
        PRESETS.get("if-xl"),
        sources={**PRESETS.get("if-xl").sources, "stage_1": Source("DeepFloyd/IF-I-XL-v1.0", "abc123")},
    )
    with pytest.raises(UserError) as error:
        check_available(preset)
    message = str(error.value)
    assert "preset 'if-xl'" in message and "DeepFloyd/IF-I-XL-v1.0@abc123" in message and "\n" not in message


def test_wrong_stage_layout_for_backend_is_refused(latent_folder):
    preset = replace(PRESETS.get("tiny-cascaded"), local_dir=latent_folder, backend="latent")
    with pytest.raises(UserError, match=r"latent backend takes one 'latent' or 'latent-dit' stage"):
        BACKENDS.get("latent").load(preset, CPU_FP32)
