"""Guidance and the loop: known answers and invariants."""

from __future__ import annotations

import pytest
import torch

from suite.model.denoise import GuidedUNet, classifier_free_guidance


def test_guidance_formula_and_variance_from_conditional_half():
    uncond = torch.tensor([[[[1.0]], [[2.0]], [[9.0]]]])  # 2 eps channels + 1 variance channel
    cond = torch.tensor([[[[3.0]], [[6.0]], [[5.0]]]])
    guided = classifier_free_guidance(torch.cat([uncond, cond]), 2.5, sample_channels=2)
    assert guided.flatten().tolist() == [1 + 2.5 * 2, 2 + 2.5 * 4, 5.0]


def test_scale_one_is_conditional_and_zero_is_unconditional():
    uncond, cond = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    both = torch.cat([uncond, cond])
    assert torch.allclose(classifier_free_guidance(both, 1.0, 4), cond, atol=1e-6)
    assert torch.equal(classifier_free_guidance(both, 0.0, 4), uncond)


class RecordingUNet(torch.nn.Module):
    """Returns its input plus the mean embedding; records what it was called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, sample, timestep, encoder_hidden_states, class_labels=None, return_dict=False):
        self.calls.append((sample.shape, encoder_hidden_states.shape, class_labels))
        return (sample[:, :2] + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1),)


def test_guided_unet_batches_uncond_then_cond_and_skips_uncond_at_scale_one():
    unet = RecordingUNet()
    prompt, negative = torch.ones(1, 3, 4), torch.zeros(1, 3, 4)
    sample, image = torch.zeros(1, 2, 5, 5), torch.full((1, 3, 5, 5), 7.0)
    labels = torch.tensor([250])
    guided = GuidedUNet(unet, prompt, negative, 3.0, conditioning_image=image, class_labels=labels)
    output = guided(sample, torch.tensor(10))
    assert unet.calls[-1][0] == (2, 5, 5, 5) and unet.calls[-1][2].tolist() == [250, 250]
    # uncond output 0, cond output 1 -> 0 + 3 * (1 - 0)
    assert torch.allclose(output, torch.full_like(output, 3.0))
    unguided = GuidedUNet(unet, prompt, negative, 1.0)
    assert torch.allclose(unguided(sample, torch.tensor(10)), torch.ones(1, 2, 5, 5))
    assert unet.calls[-1][0] == (1, 2, 5, 5)


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++", "euler"])
def test_the_last_x0_prediction_is_the_final_sample(sampler):
    """The step hook's x0 prediction converges to what the loop returns (toy latent model, no clipping)."""
    from suite.model.backends import BACKENDS
    from suite.model.denoise import KeepPredictions
    from suite.model.loading import LoadOptions
    from suite.model.presets import PRESETS
    from suite.model.stages import StageSettings, run_stage
    from suite.model.timing import Clock

    pipeline = BACKENDS.get("latent").load(
        PRESETS.get("toy-latent"), LoadOptions(torch.device("cpu"), torch.float32, torch.float32)
    )
    clock = Clock(torch.device("cpu"))
    prompts = ["a red circle above a blue square"]
    pipeline.encode(prompts, prompts, clock)
    stage = pipeline.stages[0]
    stage.vae = None  # keep the final latent
    cache = pipeline.caches["clip"]
    keep = KeepPredictions()
    final, _ = run_stage(
        stage,
        StageSettings(sampler, 20, 3.0),
        cache.lookup(prompts),
        cache.lookup([""]),
        [torch.Generator().manual_seed(0)],
        clock,
        hooks=[keep],
    )
    predictions = keep.predictions["latent"]
    assert len(predictions) == 20
    first, last = predictions[0], predictions[-1]
    assert (last - final).abs().max() < 0.05 * final.abs().max()
    assert (last - final).abs().mean() < (first - final).abs().mean() / 5  # it settles towards the image
