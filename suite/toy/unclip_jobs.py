"""What unCLIP's toy recipes train: the prior and the decoder, both reading the frozen toy CLIP."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from suite.model.presets import TOY_WEIGHTS
from suite.toy import clip, models, world
from suite.toy.jobs import DiffusionJob, Job, TokenCache, drop_captions, images_to_tensor
from suite.toy.recipes import Recipe


class ToyClipSide:
    """unCLIP's frozen CLIP: the toy CLIP's image embeddings and its text tower as unCLIP reads it.

    The toy CLIP comes from this training run (``work/clip``) when it has one, else the shipped one, as the
    ablation's cells read the shipped VAE. Every caption's per-token states, projected embedding and mask are
    computed once.
    """

    def __init__(self, work: Path):
        folder = work / "clip" / "final"
        self.clip_folder = folder if (work / "clip" / "summary.json").is_file() else TOY_WEIGHTS / "toy-clip"
        self.clip = clip.load(self.clip_folder).float()
        self.text_encoder, self.tokenizer = clip.text_tower_as_transformers(self.clip)
        tokens = TokenCache(self.tokenizer, with_mask=True, max_length=self.tokenizer.model_max_length)
        with torch.no_grad():
            output = self.text_encoder(tokens.input_ids)
        self.index, self.mask = tokens.index, tokens.mask.bool()
        self.states, self.pooled = output.last_hidden_state, output.text_embeds

    def text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token states, projected pooled embeddings and masks of ``captions``."""
        rows = torch.tensor([self.index[caption] for caption in captions])
        return self.states[rows], self.pooled[rows], self.mask[rows]

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """The toy CLIP's projected image embeddings (not normalised), as unCLIP's decoder and prior use them."""
        return self.clip.encode_image(images)

    def export_text(self, folder: Path) -> None:
        self.text_encoder.half().save_pretrained(folder / "text_encoder")  # the toy CLIP ships in fp16: lossless
        self.text_encoder.float()
        self.tokenizer.save_pretrained(folder / "tokenizer")


CLIP_STATISTICS_IMAGES = 4096  # images whose toy-CLIP embeddings give the prior's normalising mean and std


_STATISTICS: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _clip_statistics(side: ToyClipSide, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the toy CLIP's image embeddings over ``CLIP_STATISTICS_IMAGES`` images drawn from ``seed``;
    computed once per process and toy CLIP (13 s on one core), as a resumed run computes them again."""
    key = (str(side.clip_folder), seed)
    if key not in _STATISTICS:
        images, _ = world.sample_batch(seed=seed * 7919, count=CLIP_STATISTICS_IMAGES)
        embeddings = torch.cat([side.image_embeddings(chunk) for chunk in images_to_tensor(images).split(256)])
        _STATISTICS[key] = embeddings.mean(dim=0, keepdim=True), embeddings.std(dim=0, keepdim=True)
    return _STATISTICS[key]


class PriorJob(Job):
    """unCLIP's prior: from the caption's CLIP text states and embedding, predict the clean CLIP image embedding
    of an image drawn for it (DALL-E 2's diffusion prior: the clean embedding as target, mean-squared error).

    The embedding is normalised by its per-dimension mean and std over training images (the prior's
    ``clip_mean``/``clip_std``, which stay fixed), as Karlo's prior is.
    """

    def __init__(self, recipe: Recipe, work: Path):
        super().__init__(recipe, work)
        self.clip = ToyClipSide(work)
        prior = models.prior()
        mean, std = _clip_statistics(self.clip, recipe.seed)
        with torch.no_grad():
            prior.clip_mean.copy_(mean)
            prior.clip_std.copy_(std)
        prior.clip_mean.requires_grad_(False)
        prior.clip_std.requires_grad_(False)
        self.trained = {"prior": prior}
        self.scheduler = models.prior_scheduler()
        self.noise_scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")  # the prior scheduler's betas

    def loss(self, step: int) -> torch.Tensor:
        images, captions, generator = self.batch(step)
        prior = self.trained["prior"]
        clean = (self.clip.image_embeddings(images) - prior.clip_mean) / prior.clip_std
        states, pooled, mask = self.clip.text(drop_captions(captions, self.recipe.caption_dropout, generator))
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (len(clean),), generator=generator
        )
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        predicted = prior(
            noisy, timestep=timesteps, proj_embedding=pooled, encoder_hidden_states=states, attention_mask=mask
        ).predicted_image_embedding
        return F.mse_loss(predicted, clean)

    def export(self, trained, folder):
        trained["prior"].half().save_pretrained(folder / "prior")
        self.scheduler.save_pretrained(folder / "prior_scheduler")
        self.clip.export_text(folder)
        return {"clip": str(self.clip.clip_folder.name)}


IMAGE_EMBEDDING_DROPOUT = 0.1  # DALL-E 2's decoder: the CLIP embedding dropped 10% of the time, the caption 50%


class DecoderJob(DiffusionJob):
    """unCLIP's decoder at 16 px: a pixel UNet conditioned on the toy CLIP's embedding of the image it denoises
    (through ``text_proj``) and on the caption's CLIP states; IF-I's objective (epsilon, Min-SNR, learned range).

    Classifier-free guidance as DALL-E 2 trains it: the image embedding is replaced by text_proj's learned
    "no image" embedding with probability 0.1, the caption by the empty prompt with the recipe's dropout (0.5),
    independently. x4 super-resolution to 64 px is toy-cascaded's trained SR stage.
    """

    learned_variance = True

    def __init__(self, recipe: Recipe, work: Path):
        super().__init__(recipe, work)
        self.clip = ToyClipSide(work)
        self.trained = {"unet": models.decoder_unet(), "text_proj": models.text_proj()}
        self.scheduler = models.decoder_scheduler()
        self.noise_scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")

    def loss(self, step: int) -> torch.Tensor:
        images, captions, generator = self.batch(step)
        text_proj = self.trained["text_proj"]
        embeddings = self.clip.image_embeddings(images)
        dropped = torch.rand(len(captions), generator=generator) < IMAGE_EMBEDDING_DROPOUT
        no_image = text_proj.learned_classifier_free_guidance_embeddings.expand_as(embeddings)
        embeddings = torch.where(dropped[:, None], no_image, embeddings)
        states, pooled, mask = self.clip.text(drop_captions(captions, self.recipe.caption_dropout, generator))
        context, time_embeddings = text_proj(
            image_embeddings=embeddings,
            prompt_embeds=pooled,
            text_encoder_hidden_states=states,
            do_classifier_free_guidance=False,
        )
        mask = F.pad(mask, (text_proj.config.clip_extra_context_tokens, 0), value=True)
        low_res = F.avg_pool2d(images, 64 // models.BASE_SIZE)
        return self.diffusion_loss(
            self.trained["unet"], low_res, context, generator, class_labels=time_embeddings, attention_mask=mask
        )

    def export(self, trained, folder):
        trained["unet"].half().save_pretrained(folder / "decoder")
        trained["text_proj"].half().save_pretrained(folder / "text_proj")
        self.scheduler.save_pretrained(folder / "decoder_scheduler")
        return {"clip": str(self.clip.clip_folder.name)}


UNCLIP_JOBS = {"prior": PriorJob, "decoder": DecoderJob}
