"""What each toy recipe trains: its models, its loss on one step's batch, and its export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from transformers import T5EncoderModel

from suite.model.presets import TOY_WEIGHTS
from suite.model.text import NEGATIVE_PROMPT
from suite.toy import clip, models, world
from suite.toy.losses import epsilon_loss, learned_range_vlb
from suite.toy.recipes import ABLATION_CELLS, Recipe

VLB_WEIGHT = 0.001  # Improved DDPM's lambda for the variance term of L_hybrid
SUPER_RESOLUTION_CROP = 32  # SR trains on random 32 px crops (Imagen trains its SR models on crops)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


class TokenCache:
    """Token ids (and attention masks) of every caption, padded to 77 tokens as the pipelines do."""

    def __init__(self, tokenizer, with_mask: bool, max_length: int = 77):
        texts = [caption.text for caption in world.all_captions()] + [NEGATIVE_PROMPT]
        tokens = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        self.index = {text: row for row, text in enumerate(texts)}
        self.input_ids, self.mask = tokens.input_ids, tokens.attention_mask if with_mask else None

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = torch.tensor([self.index[caption] for caption in captions])
        return self.input_ids[rows], None if self.mask is None else self.mask[rows]


def drop_captions(captions: list[str], probability: float, generator: torch.Generator) -> list[str]:
    """Replace captions by the empty prompt with ``probability`` (what classifier-free guidance needs)."""
    keep = torch.rand(len(captions), generator=generator) >= probability
    return [caption if kept else NEGATIVE_PROMPT for caption, kept in zip(captions, keep.tolist())]


class Job:
    """A recipe's models and loss. ``trained`` modules are optimised and EMA-averaged, then exported."""

    trained: dict[str, torch.nn.Module]

    def __init__(self, recipe: Recipe, work: Path):
        self.recipe, self.work = recipe, work

    def batch(self, step: int) -> tuple[torch.Tensor, list[str], torch.Generator]:
        generator = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + step)
        images, captions = world.sample_batch(self.recipe.seed * 10_000_019 + step, self.recipe.batch_size)
        return images_to_tensor(images), captions, generator

    def loss(self, step: int) -> torch.Tensor:
        raise NotImplementedError

    def export(self, trained: dict[str, torch.nn.Module], folder: Path) -> dict:
        """Write the final models into ``folder``; return evaluation numbers for training.json."""
        raise NotImplementedError


class VaeJob(Job):
    """SD's AutoencoderKL objective without the adversarial and perceptual terms: MSE + L1 + tiny KL."""

    def __init__(self, recipe: Recipe, work: Path):
        super().__init__(recipe, work)
        self.trained = {"vae": models.vae()}

    def loss(self, step: int) -> torch.Tensor:
        images, _, generator = self.batch(step)
        vae = self.trained["vae"]
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        return (
            F.mse_loss(reconstruction, images) + 0.1 * F.l1_loss(reconstruction, images) + 1e-6 * posterior.kl().mean()
        )

    def export(self, trained, folder):
        vae = trained["vae"].eval().half().float()  # evaluate what ships: fp16 weights
        images = images_to_tensor(world.sample_batch(seed=777, count=256, include_held_out=True)[0])
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(0))
            scaling_factor = float(1 / latents.std())
            reconstruction = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
        psnr = psnr_db(reconstruction, images)
        vae.register_to_config(scaling_factor=scaling_factor)
        vae.half().save_pretrained(folder / "vae")
        return {"held_out_psnr_db": psnr, "scaling_factor": scaling_factor}


def psnr_db(reconstruction: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of [-1, 1] images measured on the [0, 1] scale."""
    mse = F.mse_loss((reconstruction + 1) / 2, (reference + 1) / 2).item()
    return 10 * float(np.log10(1 / mse))


class DiffusionJob(Job):
    """Shared by the three denoisers: noise, timesteps, Min-SNR epsilon loss (+ IF's variance term)."""

    noise_scheduler: DDPMScheduler
    learned_variance = False

    def diffusion_loss(
        self, unet, clean, states, generator, conditioning=None, class_labels=None, attention_mask=None
    ) -> torch.Tensor:
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (len(clean),), generator=generator
        )
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        model_input = noisy if conditioning is None else torch.cat([noisy, conditioning], dim=1)
        output = unet(
            model_input,
            timesteps,
            encoder_hidden_states=states,
            class_labels=class_labels,
            attention_mask=attention_mask,
        ).sample
        channels = clean.shape[1]
        loss = epsilon_loss(self.noise_scheduler, output[:, :channels], noise, timesteps)
        if self.learned_variance:
            variance = output[:, channels:]
            loss = loss + VLB_WEIGHT * learned_range_vlb(
                self.noise_scheduler, variance, output[:, :channels], clean, noisy, timesteps
            )
        return loss


class TextSide:
    """A jointly trained text encoder as its family uses it: CLIP-style (causal, no attention mask,
    as SD passes none) or T5-style (bidirectional, relative positions, attention mask, as IF)."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "clip":
            self.tokenizer = models.clip_tokenizer()
        else:
            self.tokenizer = models.t5_tokenizer()
        self.tokens = TokenCache(self.tokenizer, with_mask=kind == "t5")

    def build(self, dropout: float | None = None) -> torch.nn.Module:
        """The encoder; ``dropout`` overrides T5's default 0.1 (CLIP's text tower has none)."""
        if self.kind == "clip":
            return models.clip_text_encoder(self.tokenizer)
        return models.t5_encoder(self.tokenizer) if dropout is None else models.t5_encoder(self.tokenizer, dropout)

    def states(self, encoder: torch.nn.Module, captions: list[str]) -> torch.Tensor:
        input_ids, mask = self.tokens(captions)
        return encoder(input_ids, attention_mask=mask)[0]


class LatentJob(DiffusionJob):
    """Stable Diffusion's recipe: the UNet learns on VAE latents; the text encoder trains jointly.

    The shipped toy-latent uses the CLIP-style encoder and the VAE trained by the ``vae`` recipe. An
    ``ablation`` cell picks its encoder (no dropout), has the narrower ablation UNet and shares the shipped
    VAE. Every encoder is stored in fp16 (the ablation's were fp32 until the weights budget needed the room:
    rounding changes their states by 2-4e-4 of their RMS).
    """

    def __init__(self, recipe: Recipe, work: Path, text: str = "clip", ablation: bool = False):
        super().__init__(recipe, work)
        vae_folder = TOY_WEIGHTS / "toy-latent" / "vae" if ablation else work / "vae" / "final" / "vae"
        self.vae = AutoencoderKL.from_pretrained(vae_folder).eval().requires_grad_(False)
        self.text = TextSide(text)
        unet = models.latent_unet(models.ABLATION_CHANNELS) if ablation else models.latent_unet()
        self.trained = {"unet": unet, "text_encoder": self.text.build(dropout=0.0 if ablation else None)}
        self.scheduler = models.latent_scheduler()
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler.config)

    def loss(self, step: int) -> torch.Tensor:
        images, captions, generator = self.batch(step)
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample(generator=generator) * self.vae.config.scaling_factor
        captions = drop_captions(captions, self.recipe.caption_dropout, generator)
        states = self.text.states(self.trained["text_encoder"], captions)
        return self.diffusion_loss(self.trained["unet"], latents, states, generator)

    def export(self, trained, folder):
        trained["unet"].half().save_pretrained(folder / "unet")
        trained["text_encoder"].half().save_pretrained(folder / "text_encoder")
        self.text.tokenizer.save_pretrained(folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        return {}


class BaseJob(DiffusionJob):
    """IF stage I: a pixel UNet at 16 px with learned-range variance; the text encoder trains jointly.

    The shipped toy-cascaded uses the T5-style encoder (stored in fp32); an ``ablation`` cell picks its
    encoder (no dropout, stored in fp16 as the latent cells' are) and has the narrower ablation UNet.
    """

    learned_variance = True

    def __init__(self, recipe: Recipe, work: Path, text: str = "t5", ablation: bool = False):
        super().__init__(recipe, work)
        self.text = TextSide(text)
        unet = models.base_unet(models.ABLATION_CHANNELS) if ablation else models.base_unet()
        self.trained = {"unet": unet, "text_encoder": self.text.build(dropout=0.0 if ablation else None)}
        self.scheduler = models.if_scheduler(sample_max_value=1.5)
        self.noise_scheduler = self.scheduler
        self.half_text_encoder = ablation

    def loss(self, step: int) -> torch.Tensor:
        images, captions, generator = self.batch(step)
        low_res = F.avg_pool2d(images, 64 // models.BASE_SIZE)
        captions = drop_captions(captions, self.recipe.caption_dropout, generator)
        states = self.text.states(self.trained["text_encoder"], captions)
        return self.diffusion_loss(self.trained["unet"], low_res, states, generator)

    def export(self, trained, folder):
        trained["unet"].half().save_pretrained(folder / "unet")
        encoder = trained["text_encoder"].half() if self.half_text_encoder else trained["text_encoder"]
        encoder.save_pretrained(folder / "text_encoder")
        self.text.tokenizer.save_pretrained(folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        return {}


class SuperResolutionJob(DiffusionJob):
    """IF stage II: x4 pixel SR on noise-augmented, upsampled low-res images, with the base's frozen T5."""

    learned_variance = True

    def __init__(self, recipe: Recipe, work: Path):
        super().__init__(recipe, work)
        base = work / "base" / "final"
        self.text_encoder = T5EncoderModel.from_pretrained(base / "text_encoder").eval().requires_grad_(False)
        self.tokens = TokenCache(models.t5_tokenizer(), with_mask=True)
        self.trained = {"unet": models.super_resolution_unet()}
        self.scheduler = models.if_scheduler(sample_max_value=1.0)
        self.noise_scheduler = self.scheduler
        self.image_noising_scheduler = models.image_noising_scheduler()

    def loss(self, step: int) -> torch.Tensor:
        images, captions, generator = self.batch(step)
        size = images.shape[-1]
        low_res = F.avg_pool2d(images, 64 // models.BASE_SIZE)
        upsampled = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=True)
        levels = torch.randint(
            0, self.image_noising_scheduler.config.num_train_timesteps, (len(images),), generator=generator
        )
        augmented = self.image_noising_scheduler.add_noise(
            upsampled, torch.randn(upsampled.shape, generator=generator), levels
        )
        top, left = (
            int(value) for value in torch.randint(0, size - SUPER_RESOLUTION_CROP + 1, (2,), generator=generator)
        )
        crop = (
            slice(None),
            slice(None),
            slice(top, top + SUPER_RESOLUTION_CROP),
            slice(left, left + SUPER_RESOLUTION_CROP),
        )
        input_ids, mask = self.tokens(drop_captions(captions, self.recipe.caption_dropout, generator))
        with torch.no_grad():
            states = self.text_encoder(input_ids, attention_mask=mask)[0]
        return self.diffusion_loss(
            self.trained["unet"], images[crop], states, generator, conditioning=augmented[crop], class_labels=levels
        )

    def export(self, trained, folder):
        trained["unet"].half().save_pretrained(folder / "unet")
        self.scheduler.save_pretrained(folder / "scheduler")
        self.image_noising_scheduler.save_pretrained(folder / "image_noising_scheduler")
        return {}


class ClipJob(Job):
    """CLIP's symmetric contrastive loss over batches of distinct scenes (all captions, held-out ones too).

    Each batch holds different scenes, each with one of its phrasings ("A above B" or "B below A"),
    so no pair in a batch is a false negative.
    """

    def __init__(self, recipe: Recipe, work: Path):
        super().__init__(recipe, work)
        self.trained = {"clip": clip.build()}
        scenes: dict[tuple, list] = {}
        for caption in world.all_captions():
            scenes.setdefault(caption.scene, []).append(caption)
        self.scenes = list(scenes.values())

    def loss(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng(self.recipe.seed * 10_000_019 + step)
        groups = rng.choice(len(self.scenes), self.recipe.batch_size, replace=False)
        chosen = [self.scenes[group][rng.integers(len(self.scenes[group]))] for group in groups]
        images = images_to_tensor(np.stack([world.draw_caption(caption, rng) for caption in chosen]))
        tokens, _ = clip.tokenize([caption.text for caption in chosen])
        model = self.trained["clip"]
        image_features, text_features, logit_scale = model(images, tokens)  # images in [-1, 1], the tower's input range
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(len(chosen))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def export(self, trained, folder):
        model = trained["clip"].eval()
        clip.save(model, folder)
        return {"held_out_top1": retrieval_top1(clip.load(folder))}


def retrieval_top1(model: torch.nn.Module, images_per_caption: int = 1, seed: int = 4242) -> float:
    """Image -> caption top-1 over all 540 captions of the world, on freshly drawn (held-out) images.

    A retrieved caption is right when it describes the image's scene: "A below B" for an image
    drawn for "B above A" is right (the two are drawn from the same distribution of images).
    """
    rng = np.random.default_rng(seed)
    captions = world.all_captions() * images_per_caption
    images = images_to_tensor(np.stack([world.draw_caption(caption, rng) for caption in captions]))
    tokens, _ = clip.tokenize([caption.text for caption in world.all_captions()])
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1)
        image = torch.cat([F.normalize(model.encode_image(chunk), dim=-1) for chunk in images.split(256)])
    predicted = (image @ text.T).argmax(dim=1).tolist()
    every = world.all_captions()
    return float(np.mean([every[index].scene == caption.scene for index, caption in zip(predicted, captions)]))


def _ablation_job(space: str, text: str) -> Callable[[Recipe, Path], Job]:
    job = LatentJob if space == "latent" else BaseJob
    return lambda recipe, work: job(recipe, work, text=text, ablation=True)


JOBS: dict[str, Callable[[Recipe, Path], Job]] = {
    "vae": VaeJob,
    "latent": LatentJob,
    "clip": ClipJob,
    "base": BaseJob,
    "super_resolution": SuperResolutionJob,
    **{cell: _ablation_job(*cell.split("-")) for cell in ABLATION_CELLS},
}
