"""toy-unclip: the toy CLIP's text tower in transformers' form, the prior and decoder recipes, the preset."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPTextModelWithProjection

from suite.cli import main
from suite.core.errors import UserError
from suite.model.backends import BACKENDS
from suite.model.denoise import TextMasks
from suite.model.loading import LoadOptions
from suite.model.presets import PRESETS, TOY_WEIGHTS, StageSpec
from suite.model.samplers import SAMPLERS, make_scheduler
from suite.model.stages import StageSettings
from suite.model.timing import Clock
from suite.toy import clip as toy_clip
from suite.toy import train, world

CPU_FP32 = LoadOptions(torch.device("cpu"), torch.float32, torch.float32)


def _captions() -> list[str]:
    return [caption.text for caption in world.all_captions()] + [""]


def test_the_text_tower_in_transformers_form_embeds_every_caption_as_open_clip_does():
    model = toy_clip.load(TOY_WEIGHTS / "toy-clip").float()
    encoder, tokenizer = toy_clip.text_tower_as_transformers(model)
    prompts = _captions()
    expected = model.encode_text(toy_clip.tokenize(prompts)[0])
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        got = encoder(tokens.input_ids).text_embeds
    assert tokenizer.model_max_length == toy_clip.CONTEXT_LENGTH
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_shipped_toy_unclip_text_encoder_is_the_toy_clips_text_tower():
    """What the preset loads (fp16 on disk, as the toy CLIP ships) gives the toy CLIP's text embeddings."""
    shipped = CLIPTextModelWithProjection.from_pretrained(TOY_WEIGHTS / "toy-unclip" / "text_encoder").float()
    converted, _ = toy_clip.text_tower_as_transformers(toy_clip.load(TOY_WEIGHTS / "toy-clip").float())
    for name, tensor in converted.state_dict().items():
        assert torch.equal(shipped.state_dict()[name], tensor), name


def test_toy_unclip_loads_its_prior_decoder_and_toy_cascadeds_sr_stage():
    pipeline = BACKENDS.get("unclip").load(PRESETS.get("toy-unclip"), CPU_FP32)
    assert [stage.name for stage in pipeline.stages] == ["prior", "decoder", "super_resolution_1"]
    assert sorted(pipeline.text_encoders) == ["clip", "t5:sr_text"]
    assert pipeline.text_encoders["clip"].max_length == toy_clip.CONTEXT_LENGTH
    prior, decoder, upsampler = pipeline.stages
    assert prior.unet.config.embedding_dim == 128 and decoder.unet.config.sample_size == 16
    assert upsampler.text_encoder == "t5:sr_text" and upsampler.conditioning is not None


@pytest.mark.parametrize(
    "stages, message",
    [
        ((StageSpec("prior", "prior", "model"), StageSpec("decoder", "unclip-decoder", "model")), "then one"),
        (
            (
                StageSpec("prior", "prior", "model"),
                StageSpec("decoder", "unclip-decoder", "model"),
                StageSpec("sr", "pixel-sr", "stage_2"),
            ),
            "needs a text_source",
        ),
        (
            (
                StageSpec("prior", "prior", "model"),
                StageSpec("decoder", "unclip-decoder", "stage_2"),
                StageSpec("sr", "unclip-sr", "model"),
            ),
            "from one source",
        ),
    ],
)
def test_unclip_refuses_stage_lists_it_cannot_run(stages, message):
    preset = replace(PRESETS.get("toy-unclip"), stages=stages)
    with pytest.raises(UserError, match=message):
        BACKENDS.get("unclip").load(preset, CPU_FP32)


@pytest.mark.parametrize("name, parts", [("prior", ("prior",)), ("decoder", ("decoder", "text_proj"))])
def test_a_killed_unclip_recipe_resumes_to_the_same_weights(tmp_path, name, parts):
    """Two steps, checkpoint, a fresh start, two more == four straight."""
    recipe = replace(train.UNCLIP_RECIPES[name], iterations=4, batch_size=2, checkpoint_every=2, log_every=2, warmup=2)
    train.run_recipe(recipe, tmp_path / "straight", log=lambda line: None)
    train.run_recipe(replace(recipe, iterations=2), tmp_path / "resumed", log=lambda line: None)
    (tmp_path / "resumed" / name / "summary.json").unlink()  # as if killed after step 2
    torch.manual_seed(12345)
    summary = train.run_recipe(recipe, tmp_path / "resumed", log=lambda line: None)
    assert summary["images_seen"] == 8 and summary["training_flops"] > 0
    for part in parts:
        weights = [
            load_file(next((tmp_path / run / name / "final" / part).glob("*.safetensors")))
            for run in ("straight", "resumed")
        ]
        assert weights[0].keys() == weights[1].keys()
        for key in weights[0]:
            assert torch.equal(weights[0][key], weights[1][key]), (part, key)


def test_the_prior_keeps_the_toy_clips_embedding_statistics(tmp_path):
    """clip_mean / clip_std are measured once from the toy CLIP and never trained."""
    recipe = replace(train.UNCLIP_RECIPES["prior"], iterations=2, batch_size=2, checkpoint_every=2, log_every=2)
    job = train.JOBS["prior"](recipe, tmp_path)
    prior = job.trained["prior"]
    before = prior.clip_mean.clone(), prior.clip_std.clone()
    assert not prior.clip_mean.requires_grad and not prior.clip_std.requires_grad
    assert (before[1] > 0).all() and before[0].abs().sum() > 0
    train.run_recipe(recipe, tmp_path, log=lambda line: None)
    shipped = load_file(next((tmp_path / "prior" / "final" / "prior").glob("*.safetensors")))
    torch.testing.assert_close(shipped["clip_mean"].float(), before[0], rtol=1e-3, atol=1e-3)  # fp16 on disk
    torch.testing.assert_close(shipped["clip_std"].float(), before[1], rtol=1e-3, atol=1e-3)


def test_the_shipped_priors_embeddings_retrieve_their_captions_scene():
    """One prior sample per caption of the world (held-out pairs too), 10 DPM-Solver++ steps at guidance 4: its
    nearest caption by the toy CLIP's text embedding names the same scene (measured: 540 of 540)."""
    pipeline = BACKENDS.get("unclip").load(PRESETS.get("toy-unclip"), CPU_FP32)
    prior, encoder = pipeline.stages[0], pipeline.text_encoders["clip"]
    captions = world.all_captions()
    texts, empty = [caption.text for caption in captions], [""] * len(captions)
    masks = TextMasks(encoder.attention_mask(texts), encoder.attention_mask(empty))
    generators = [torch.Generator().manual_seed(index) for index in range(len(texts))]
    settings = StageSettings("dpm-solver++", 10, 4.0)
    embeddings, _ = prior.run(
        settings, encoder(texts), encoder(empty), generators, Clock(torch.device("cpu")), masks=masks
    )
    model = toy_clip.load(TOY_WEIGHTS / "toy-clip").float()
    with torch.no_grad():
        text = F.normalize(model.encode_text(toy_clip.tokenize(texts)[0]), dim=-1)
    nearest = (F.normalize(embeddings, dim=-1) @ text.T).argmax(dim=1).tolist()
    right = [captions[index].scene == caption.scene for index, caption in zip(nearest, captions)]
    assert sum(right) / len(right) >= 0.95


def test_toy_unclip_is_counted_from_its_configs_with_the_toy_clips_12_positions(tmp_path):
    """Counting builds the pipeline on the meta device, without a tokenizer: the prompt length then comes from the
    text tower's positions (12), not unCLIP's usual 77, which this tower cannot take."""
    assert main(["profile", "toy-unclip", "--out", str(tmp_path)]) == 0
    stages = pd.read_csv(tmp_path / "stages.csv")
    assert list(stages["kind"]) == ["prior", "unclip-decoder", "pixel-sr"]
    assert (stages["tflops_per_image"] > 0).all()


def test_every_sampler_the_decoder_accepts_makes_shapes_on_a_light_background():
    """toy-unclip's decoder clips x0 to [-1, 1]. Samplers that can only threshold get that clip (without it
    DPM-Solver++ gave coloured noise: 0 of 792 sweep images right); Euler, Euler ancestral and Heun, which can do
    neither, are refused. The image's top and bottom rows are the world's flat background: their spread is 0.09-0.15
    for every accepted sampler, about 1.0 for noise."""
    pipeline = BACKENDS.get("unclip").load(PRESETS.get("toy-unclip"), CPU_FP32)
    prior, decoder = pipeline.stages[:2]
    encoder = pipeline.text_encoders["clip"]
    texts = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]
    empty = [""] * len(texts)
    masks = TextMasks(encoder.attention_mask(texts), encoder.attention_mask(empty))
    clock = Clock(torch.device("cpu"))

    def generators():
        return [torch.Generator().manual_seed(index) for index in range(len(texts))]

    text, negative = encoder(texts), encoder(empty)
    embeddings, _ = prior.run(StageSettings("ddpm", 20, 4.0), text, negative, generators(), clock, masks=masks)
    refused = []
    for sampler in SAMPLERS.names():
        try:
            make_scheduler(sampler, decoder.scheduler_config)
        except ValueError:
            refused.append(sampler)
            continue
        images, _ = decoder.run(
            StageSettings(sampler, 10, 3.0), text, negative, generators(), clock, embeddings, masks=masks
        )
        border = torch.cat([images[..., 0, :], images[..., -1, :]], dim=-1)
        assert float(border.std()) < 0.35, sampler
    assert sorted(refused) == ["euler", "euler-ancestral", "heun"]
