"""The article's claims: the measures behind the verdicts give known answers, and the report rebuilds byte for byte."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import CLIPTokenizer

from suite.analysis.claims import ClaimsOptions
from suite.analysis.claims.attention import (
    AttentionRecorder,
    bleed,
    cross_attention_layers,
    downsample,
    token_positions,
)
from suite.analysis.claims.attention_bleed import context_positions
from suite.analysis.claims.claim_file import load_claim, load_claims
from suite.analysis.claims.common import INCONCLUSIVE, NOT_SUPPORTED, PARTLY, SUPPORTED, hooked_samples, overall
from suite.analysis.claims.cost import matched_points
from suite.analysis.claims.report import build_claims_report, upgraded_data
from suite.analysis.claims.saturation import clipped_fraction, mean_saturation, palette_distance
from suite.analysis.claims.steps import _equivalent_from
from suite.analysis.claims.structure import settled_step
from suite.cli import main
from suite.core.errors import UserError
from suite.model.backends import BACKENDS
from suite.model.denoise import KeepPredictions
from suite.model.loading import LoadOptions
from suite.model.presets import PRESETS, TOY_WEIGHTS
from suite.run.config import parse_sweep, resolve
from suite.run.options import RunOptions
from suite.run.runner import run_sweep
from suite.toy import models
from suite.toy.world import BACKGROUND, COLOURS

REPOSITORY = Path(__file__).resolve().parents[2]
COMMITTED = REPOSITORY / "results" / "claims" / "report"


# -- saturation: known answers on synthetic images ---------------------------------------------------------


def _flat(colour, size=8) -> np.ndarray:
    return np.full((size, size, 3), colour, dtype=np.uint8)


def test_saturation_of_flat_colours():
    assert mean_saturation(_flat((255, 0, 0))) == 1.0
    assert mean_saturation(_flat((128, 128, 128))) == 0.0
    assert mean_saturation(_flat((0, 0, 0))) == 0.0  # black: saturation defined as 0, not NaN
    assert mean_saturation(_flat((200, 100, 50))) == pytest.approx(150 / 200)
    half = np.concatenate([_flat((255, 0, 0)), _flat((128, 128, 128))])
    assert mean_saturation(half) == pytest.approx(0.5)


def test_clipped_fraction_counts_pixels_with_a_channel_at_either_end():
    image = _flat((100, 100, 100))
    image[0, :4] = (255, 100, 100)  # 4 pixels clipped high
    image[1, :4] = (100, 0, 100)  # 4 clipped low
    assert clipped_fraction(image) == pytest.approx(8 / 64)
    assert clipped_fraction(_flat((1, 254, 128))) == 0.0


def test_palette_distance_is_zero_in_the_palette_and_exact_off_it():
    image = np.concatenate([_flat(BACKGROUND), _flat(COLOURS["red"]), _flat(COLOURS["blue"])])
    assert palette_distance(image) == 0.0
    # pure white: nearest palette colour is the background (236, 236, 230)
    assert palette_distance(_flat((255, 255, 255))) == pytest.approx(math.sqrt(19**2 + 19**2 + 25**2))


# -- attention maps ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [models.latent_unet, models.base_unet], ids=["sd-style", "if-style"])
def test_attention_maps_are_probabilities_over_tokens(build):
    torch.manual_seed(0)
    unet = build().eval()
    images, tokens = 2, 9
    sample = torch.randn(images, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    context = torch.randn(2 * images, tokens, 64)
    processors = {name: type(module.processor) for name, (module, _) in cross_attention_layers(unet).items()}
    with AttentionRecorder(unet, images) as recorder, torch.no_grad():
        for timestep in (900, 500):  # guided: [unconditional; conditional], two steps
            unet(torch.cat([sample, sample]), torch.tensor(timestep), encoder_hidden_states=context)
    maps, mass = recorder.maps(), recorder.text_mass()
    assert len(maps) >= 2  # cross-attention at several resolutions
    for side, side_maps in maps.items():
        assert side_maps.shape == (images, side, side, tokens)
        assert (side_maps >= 0).all()
        sums = side_maps.sum(axis=-1).reshape(images, -1)
        np.testing.assert_allclose(sums, mass[side], atol=1e-6)  # text share of each position's distribution
        if build is models.latent_unet:
            np.testing.assert_allclose(sums, 1.0, atol=1e-5)  # SD-style: keys are the prompt's tokens only
        else:
            assert ((sums > 0) & (sums < 1)).all()  # IF-style: the rest of each row is on image positions
    restored = {name: type(module.processor) for name, (module, _) in cross_attention_layers(unet).items()}
    assert restored == processors and not any("get_attention_scores" in vars(module) for module in unet.modules())


def test_attention_maps_of_unclips_decoder_cover_its_extra_tokens_and_the_prompt():
    """unCLIP's decoder attends to text_proj's extra CLIP tokens, then the prompt's: a word's map is at its
    position plus the decoder's ``text_token_offset``."""
    torch.manual_seed(0)
    unet, text_proj = models.decoder_unet().eval(), models.text_proj()
    images, tokens = 2, models.CLIP_TOKENS
    extra = text_proj.config.clip_extra_context_tokens
    sample = torch.randn(images, 3, unet.config.sample_size, unet.config.sample_size)
    context = torch.randn(2 * images, extra + tokens, unet.config.cross_attention_dim)
    time = torch.randn(2 * images, unet.config.block_out_channels[0] * 4)
    with AttentionRecorder(unet, images) as recorder, torch.no_grad():
        unet(torch.cat([sample, sample]), torch.tensor(500), encoder_hidden_states=context, class_labels=time)
    for side, side_maps in recorder.maps().items():
        assert side_maps.shape == (images, side, side, extra + tokens)


def test_token_positions_find_the_colour_words_in_both_tokenizers():
    prompt = "a red circle above a blue square"
    assert token_positions(models.clip_tokenizer(), prompt, ["red", "blue"]) == {"red": [2], "blue": [6]}
    assert token_positions(models.t5_tokenizer(), prompt, ["red", "blue"], lowercase=True) == {"red": [1], "blue": [5]}
    # toy-latent's shipped tokenizer (built before every known word became one token) spells "green" in four
    # pieces: <bos> a g re e n</w> square ...; today's builds it as one
    shipped = CLIPTokenizer.from_pretrained(TOY_WEIGHTS / "toy-latent" / "tokenizer")
    found = token_positions(shipped, "a green square left of a red circle", ["green", "red"])
    assert found == {"green": [2, 3, 4, 5], "red": [10]}
    found = token_positions(models.clip_tokenizer(), "a green square left of a red circle", ["green", "red"])
    assert found == {"green": [2], "red": [7]}


def test_bleed_known_answers():
    own, other = np.zeros((4, 4)), np.zeros((4, 4))
    own[:2], other[2:] = 1, 1
    on_own = own / own.sum()
    assert bleed(on_own, own, other) == 0.0
    assert bleed(other / other.sum(), own, other) == 1.0
    assert bleed(np.ones((4, 4)), own, other) == 0.5  # uniform attention: chance
    assert math.isnan(bleed(np.ones((4, 4)), np.zeros((4, 4)), np.zeros((4, 4))))
    mask = np.zeros((64, 64), dtype=bool)
    mask[:16, :32] = True
    np.testing.assert_allclose(downsample(mask, 4)[0], [1, 1, 0, 0])


# -- the rules behind verdicts -----------------------------------------------------------------------------


def test_settled_step_is_the_first_step_from_which_the_share_stays_high():
    agree = np.array(
        [
            [0, 0, 1, 1, 1],
            [0, 1, 1, 0, 1],  # agrees at steps 1-2, loses it at step 3: counted per step, not per image
            [0, 0, 0, 1, 1],
            [1, 1, 1, 1, 1],
        ]
    )
    # shares per step: 0.25, 0.5, 0.75, 0.75, 1.0
    assert settled_step(agree, 0.75) == 2.0
    assert settled_step(agree, 0.5) == 1.0
    assert settled_step(agree, 1.0) == 4.0
    assert settled_step(np.ones((3, 4)), 0.9) == 0.0


def test_equivalent_from_the_first_step_count_after_which_every_count_is_equivalent():
    rows = pd.DataFrame(
        {"num_inference_steps": [5, 10, 20, 50], "relation": ["different", "equivalent", "unresolved", "equivalent"]}
    )
    assert _equivalent_from(rows) == 50.0
    rows.loc[2, "relation"] = "equivalent"
    assert _equivalent_from(rows) == 10.0
    rows["relation"] = "equivalent"
    assert _equivalent_from(rows) == 5.0
    rows.loc[3, "relation"] = "unresolved"
    assert math.isnan(_equivalent_from(rows))


def test_matched_points_pair_each_familys_cheapest_point_at_the_weaker_familys_best():
    points = pd.DataFrame(
        [
            # family, accuracy, interval, seconds
            ("latent", 0.50, 0.40, 0.60, 0.10),
            ("latent", 0.30, 0.20, 0.38, 0.05),  # cheapest, but its interval misses [0.40, 0.60]
            ("latent", 0.45, 0.35, 0.55, 0.20),
            ("cascaded", 0.80, 0.70, 0.90, 2.00),
            ("cascaded", 0.58, 0.48, 0.68, 0.80),
            ("cascaded", 0.20, 0.10, 0.30, 0.30),
        ],
        columns=["family", "toy_correct", "toy_correct_ci95_low", "toy_correct_ci95_high", "seconds_per_image_median"],
    )
    target, latent, cascaded = matched_points(points)
    assert (target.family, target.toy_correct) == ("latent", 0.50)
    assert latent.seconds_per_image_median == 0.10
    assert cascaded.toy_correct == 0.58  # cheapest cascaded point overlapping [0.40, 0.60]


# -- claim files and the report ----------------------------------------------------------------------------


def test_every_shipped_claim_file_validates_and_the_eight_claims_are_there():
    configs = load_claims(REPOSITORY / "experiments" / "claims")
    assert [config.claim for config in configs] == list(range(1, 9))


def test_a_bad_claim_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "01-bad.yaml"
    path.write_text("claim: 1\ntitle: t\nstatement: s\nexperiment: nonsense\nrules: {method: steps/v1}\n")
    with pytest.raises(UserError, match="unknown claim experiment 'nonsense'"):
        load_claim(path)
    path.write_text("claim: 1\ntitle: t\nstatement: s\nexperiment: steps\n")
    with pytest.raises(UserError, match="rules: Field required"):
        load_claim(path)
    path.write_text("claim: 1\ntitle: t\nstatement: s\nexperiment: steps\nrules: {method: steps/v9}\n")
    with pytest.raises(UserError, match=r"rules\.method: 'steps/v9' is not a judge of 'steps'"):
        load_claim(path)
    path.write_text(
        "claim: 1\ntitle: t\nstatement: s\nexperiment: steps\nrules: {method: steps/v1}\nsweeps: {a: {presets: [nope]}}\n"
    )
    with pytest.raises(UserError, match=r"01-bad: sweeps\.a"):
        load_claim(path)
    assert main(["claims", "--claims-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    path.write_text("claim: 1\ntitle: t\nstatement: s\nmeasure: steps\n")  # the key's name before
    with pytest.raises(UserError, match="'measure:' is now 'experiment:'"):
        load_claim(path)


@pytest.mark.skipif(not (COMMITTED / "data").is_dir(), reason="no committed claims report")
def test_the_committed_claims_report_rebuilds_byte_identically(tmp_path):
    report = tmp_path / "report"
    shutil.copytree(COMMITTED / "data", report / "data")
    build_claims_report(report)
    first = {path.relative_to(report): path.read_bytes() for path in sorted(report.rglob("*")) if path.is_file()}
    build_claims_report(report)
    second = {path.relative_to(report): path.read_bytes() for path in sorted(report.rglob("*")) if path.is_file()}
    assert first == second
    assert (report / "report.md").read_bytes() == (COMMITTED / "report.md").read_bytes()


def test_claims_compile_reaches_every_sweep_of_a_claim(tmp_path, monkeypatch):
    """``suite claims --compile`` compiles the UNets of the claim's sweeps; without it they run eager."""
    seen = []

    def record(resolved, options):
        seen.append((resolved.sweep.name, options.compile))
        raise UserError("recorded")

    monkeypatch.setattr("suite.analysis.claims.common.run_sweep", record)
    experiments = tmp_path / "experiments"  # a copy: measuring records its start in the registry beside the files
    (experiments / "claims").mkdir(parents=True)
    shutil.copy(REPOSITORY / "experiments" / "claims" / "03-steps.yaml", experiments / "claims")
    shutil.copy(REPOSITORY / "experiments" / "registry.yaml", experiments)
    claims = ["claims", "--only", "03-steps", "--out", str(tmp_path / "out"), "--device", "cpu"]
    claims += ["--claims-dir", str(experiments / "claims")]
    assert main([*claims, "--compile"]) == 2
    assert main(claims) == 2
    assert [flag for _, flag in seen] == [True, False]


def test_hooked_sampling_makes_the_images_the_sweep_writes(tmp_path):
    sweep = {
        "name": "hooked",
        "presets": ["tiny-latent", "tiny-cascaded", "tiny-unclip"],
        "samplers": ["ddpm"],
        "steps": [3],
        "guidance": [3.0],
        "batch_size": 2,
        "prompts": {"list": ["a red circle", "a blue square above a red circle"]},
    }
    resolved = resolve(parse_sweep(sweep), tmp_path)
    run = run_sweep(resolved, RunOptions(tmp_path / "run", "cpu", progress=False)).run
    options = ClaimsOptions(out=tmp_path / "claims", device="cpu", progress=False)
    seen = 0
    for pipeline, item, images, (keep,) in hooked_samples(resolved, options, lambda item, p: [KeepPredictions()]):
        assert len(keep.predictions[pipeline.layout_stage().name]) == 3  # one x0 per step of the layout stage
        for spec, image in zip(item.images, images):
            path = run / "images" / item.preset / "ddpm" / "steps3_guidance3" / f"p{spec.prompt_index:04d}_s00.png"
            np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), image)
            seen += 1
    assert seen == 6  # three families (unCLIP's layout stage is its decoder, not its prior)


def test_sub_claims_combine_into_one_verdict():
    assert overall([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert overall([SUPPORTED, NOT_SUPPORTED]) == PARTLY
    assert overall([SUPPORTED, INCONCLUSIVE]) == PARTLY
    assert overall([NOT_SUPPORTED, INCONCLUSIVE]) == NOT_SUPPORTED
    assert overall([INCONCLUSIVE, INCONCLUSIVE]) == INCONCLUSIVE


def _as_measured_before_the_column_convention(data: Path) -> None:
    """Rewrite today's claims data as an earlier version wrote it: ``<x>_low/_high`` intervals, metric intervals
    named after the per-image column, step times in milliseconds, and the claim file's ``measure:`` key."""
    metric_columns = {
        "clip_score_mean_ci95_low": "clip_score_ci95_low",
        "clip_score_mean_ci95_high": "clip_score_ci95_high",
    }
    milliseconds = {
        "step_median_s": "ms_per_step",
        "step_median_s_ci95_low": "ms_per_step_low",
        "step_median_s_ci95_high": "ms_per_step_high",
        "step_q1_s": "step_ms_q1",
        "step_q3_s": "step_ms_q3",
    }
    for path in data.glob("*/*.csv"):
        table = pd.read_csv(path)
        for column in milliseconds:
            if column in table:
                table[column] = table[column] * 1e3
        if path.parent.name.startswith("08-"):
            milliseconds["step_median_s"] = "step_ms_median"
        names = {}
        for column in table.columns:
            if column in milliseconds:
                names[column] = milliseconds[column]
            elif column in metric_columns:
                names[column] = metric_columns[column]
            elif column.endswith(("_ci95_low", "_ci95_high")) and not column.startswith(("toy_correct", "fid")):
                names[column] = column.replace("_ci95_", "_")
        milliseconds["step_median_s"] = "ms_per_step"
        path.write_bytes(table.rename(columns=names).to_csv(index=False, float_format="%.6g").encode())
    for path in data.glob("*/claim.yaml"):
        path.write_text(path.read_text().replace("\nexperiment: ", "\nmeasure: "))


@pytest.mark.skipif(not (COMMITTED / "data").is_dir(), reason="no committed claims report")
def test_data_measured_before_the_column_convention_rebuilds_the_same_report(tmp_path):
    report = tmp_path / "report"
    shutil.copytree(COMMITTED / "data", report / "data")
    _as_measured_before_the_column_convention(report / "data")
    assert "ms_per_step" in pd.read_csv(report / "data" / "01-values-per-step" / "step_times.csv")
    build_claims_report(report)
    assert (report / "report.md").read_bytes() == (COMMITTED / "report.md").read_bytes()


def test_claims_data_of_an_earlier_version_is_read_under_todays_names():
    before = pd.DataFrame(
        {
            "ms_per_step": [25.0],
            "ms_per_step_low": [24.0],
            "step_ms_q1": [15.0],
            "ratio_low": [1.0],
            "kid_ci95_low": [2.0],
        }
    )
    after = upgraded_data(before)
    assert list(after.columns) == [
        "step_median_s",
        "step_median_s_ci95_low",
        "step_q1_s",
        "ratio_ci95_low",
        "kid_mean_ci95_low",
    ]
    assert after.iloc[0].tolist() == pytest.approx([0.025, 0.024, 0.015, 1.0, 2.0])
    today = pd.DataFrame({"step_median_s_ci95_low": [0.1], "clip_score_mean_ci95_high": [3.0], "toy_correct": [1.0]})
    assert list(upgraded_data(today).columns) == list(today.columns)


def test_a_colour_words_attention_position_counts_unclips_extra_context_tokens():
    """Claim 6 reads a word's attention at its tokenizer position in the layout stage's context: after text_proj's
    extra CLIP tokens for unCLIP's decoder, at the position itself for a latent UNet."""
    prompt, words = "a red circle above a blue square", ["red", "blue"]
    options = LoadOptions(torch.device("cpu"), torch.float32, torch.float32)
    unclip = BACKENDS.get("unclip").load(PRESETS.get("toy-unclip"), options)
    latent = BACKENDS.get("latent").load(PRESETS.get("toy-latent-clip"), options)
    extra = unclip.layout_stage().text_token_offset
    assert unclip.layout_stage().name == "decoder" and extra == 5
    own = token_positions(unclip.text_encoders["clip"].tokenizer, prompt, words)
    assert context_positions(unclip, prompt, words) == {word: [extra + i for i in own[word]] for word in words}
    plain = token_positions(latent.text_encoders["clip"].tokenizer, prompt, words)
    assert context_positions(latent, prompt, words) == plain
