"""``suite train toy``: the recipes that rebuild every shipped toy model, resumable, from the world alone.

Recipes run in two independent tracks (VAE -> latent UNet -> CLIP evaluator; base -> super-
resolution), one process each. Every step's batch and noise are drawn from (recipe seed, step),
and a checkpoint is written every ``checkpoint_every`` steps, so a killed run resumes where it
stopped without repeating or skipping data. Finished recipes leave a ``final/`` folder; the
shipped layout (presets + evaluator + training.json) is assembled from those.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from suite.model.presets import TOY_WEIGHTS
from suite.model.text import NEGATIVE_PROMPT
from suite.toy import clip, models, world
from suite.toy.losses import epsilon_loss, learned_range_vlb

VLB_WEIGHT = 0.001  # Improved DDPM's lambda for the variance term of L_hybrid


@dataclass(frozen=True)
class Recipe:
    """One model's training budget and optimiser settings (all hyperparameters live here)."""

    name: str
    iterations: int
    batch_size: int
    learning_rate: float
    seed: int
    warmup: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    checkpoint_every: int = 250
    log_every: int = 50
    cosine_decay: bool = False  # decay the learning rate to 10% along a cosine after warm-up
    job: str = ""  # the key of the Job that trains it in JOBS; empty: the recipe's name


RECIPES = {
    "vae": Recipe(
        "vae", iterations=1200, batch_size=16, learning_rate=1e-3, seed=1, ema_decay=0.0, caption_dropout=0.0
    ),
    "latent": Recipe("latent", iterations=5000, batch_size=32, learning_rate=5e-4, seed=2),
    "clip": Recipe(
        "clip",
        iterations=2000,
        batch_size=128,
        learning_rate=1e-3,
        seed=3,
        ema_decay=0.0,
        caption_dropout=0.0,
        cosine_decay=True,
    ),
    "base": Recipe("base", iterations=4000, batch_size=32, learning_rate=5e-4, seed=4),
    "super_resolution": Recipe("super_resolution", iterations=2000, batch_size=16, learning_rate=5e-4, seed=5),
}
TRACKS = (("vae", "latent", "clip"), ("base", "super_resolution"))

# The 2x2 ablation {latent, pixel} x {CLIP-style, T5-style}: one recipe for all four cells, so
# they see the same images and captions in the same order, with the same optimiser, learning-rate
# schedule, EMA, caption dropout and noise seed. Only the denoiser's space and the text encoder differ.
ABLATION_CELLS = ("latent-clip", "latent-t5", "pixel-clip", "pixel-t5")
_ABLATION_BUDGET = {"iterations": 5000, "batch_size": 32, "learning_rate": 5e-4, "seed": 6}
ABLATION_RECIPES = {cell: Recipe(cell, job=cell, **_ABLATION_BUDGET) for cell in ABLATION_CELLS}
ABLATION_TRACKS = (("latent-clip", "pixel-t5"), ("latent-t5", "pixel-clip"))  # equal work per track
SUPER_RESOLUTION_CROP = 32  # SR trains on random 32 px crops (Imagen trains its SR models on crops)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


class TokenCache:
    """Token ids (and attention masks) of every caption, padded to 77 tokens as the pipelines do."""

    def __init__(self, tokenizer, with_mask: bool):
        texts = [caption.text for caption in world.all_captions()] + [NEGATIVE_PROMPT]
        tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
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

    def diffusion_loss(self, unet, clean, states, generator, conditioning=None, class_labels=None) -> torch.Tensor:
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (len(clean),), generator=generator
        )
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        model_input = noisy if conditioning is None else torch.cat([noisy, conditioning], dim=1)
        output = unet(model_input, timesteps, encoder_hidden_states=states, class_labels=class_labels).sample
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

    The shipped toy-latent uses the CLIP-style encoder (stored in fp16) and the VAE trained by the
    ``vae`` recipe. An ``ablation`` cell picks its encoder (no dropout, stored in fp32 like every
    cell's), has the narrower ablation UNet and shares the shipped VAE.
    """

    def __init__(self, recipe: Recipe, work: Path, text: str = "clip", ablation: bool = False):
        super().__init__(recipe, work)
        from diffusers import AutoencoderKL

        vae_folder = TOY_WEIGHTS / "toy-latent" / "vae" if ablation else work / "vae" / "final" / "vae"
        self.vae = AutoencoderKL.from_pretrained(vae_folder).eval().requires_grad_(False)
        self.text = TextSide(text)
        unet = models.latent_unet(models.ABLATION_CHANNELS) if ablation else models.latent_unet()
        self.trained = {"unet": unet, "text_encoder": self.text.build(dropout=0.0 if ablation else None)}
        self.scheduler = models.latent_scheduler()
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler.config)
        self.half_text_encoder = not ablation

    def loss(self, step: int) -> torch.Tensor:
        images, captions, generator = self.batch(step)
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample(generator=generator) * self.vae.config.scaling_factor
        captions = drop_captions(captions, self.recipe.caption_dropout, generator)
        states = self.text.states(self.trained["text_encoder"], captions)
        return self.diffusion_loss(self.trained["unet"], latents, states, generator)

    def export(self, trained, folder):
        trained["unet"].half().save_pretrained(folder / "unet")
        encoder = trained["text_encoder"].half() if self.half_text_encoder else trained["text_encoder"]
        encoder.save_pretrained(folder / "text_encoder")
        self.text.tokenizer.save_pretrained(folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        return {}


class BaseJob(DiffusionJob):
    """IF stage I: a pixel UNet at 16 px with learned-range variance; the text encoder trains jointly.

    The shipped toy-cascaded uses the T5-style encoder; an ``ablation`` cell picks its encoder (no
    dropout) and has the narrower ablation UNet.
    """

    learned_variance = True

    def __init__(self, recipe: Recipe, work: Path, text: str = "t5", ablation: bool = False):
        super().__init__(recipe, work)
        self.text = TextSide(text)
        unet = models.base_unet(models.ABLATION_CHANNELS) if ablation else models.base_unet()
        self.trained = {"unet": unet, "text_encoder": self.text.build(dropout=0.0 if ablation else None)}
        self.scheduler = models.if_scheduler(sample_max_value=1.5)
        self.noise_scheduler = self.scheduler

    def loss(self, step: int) -> torch.Tensor:
        images, captions, generator = self.batch(step)
        low_res = F.avg_pool2d(images, 64 // models.BASE_SIZE)
        captions = drop_captions(captions, self.recipe.caption_dropout, generator)
        states = self.text.states(self.trained["text_encoder"], captions)
        return self.diffusion_loss(self.trained["unet"], low_res, states, generator)

    def export(self, trained, folder):
        trained["unet"].half().save_pretrained(folder / "unet")
        trained["text_encoder"].save_pretrained(folder / "text_encoder")  # small; kept in fp32
        self.text.tokenizer.save_pretrained(folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        return {}


class SuperResolutionJob(DiffusionJob):
    """IF stage II: x4 pixel SR on noise-augmented, upsampled low-res images, with the base's frozen T5."""

    learned_variance = True

    def __init__(self, recipe: Recipe, work: Path):
        super().__init__(recipe, work)
        from transformers import T5EncoderModel

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


def _learning_rate(recipe: Recipe, step: int) -> float:
    rate = recipe.learning_rate * min(1.0, (step + 1) / recipe.warmup)
    if recipe.cosine_decay and step >= recipe.warmup:
        progress = (step - recipe.warmup) / max(1, recipe.iterations - recipe.warmup)
        rate *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return rate


def _save_checkpoint(path: Path, job: Job, ema: dict, optimizer, step: int, seconds: float) -> None:
    state = {
        "step": step,
        "seconds": seconds,
        "rng": torch.get_rng_state(),  # dropout draws from the global generator
        "optimizer": optimizer.state_dict(),
        "trained": {name: module.state_dict() for name, module in job.trained.items()},
        "ema": {name: module.state_dict() for name, module in ema.items()},
    }
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def run_recipe(recipe: Recipe, work: Path, log: Callable[[str], None] = print) -> dict:
    """Train one recipe to completion (resuming from its checkpoint) and export ``work/<name>/final``."""
    folder = work / recipe.name
    final, summary_path = folder / "final", folder / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)  # initial weights; every batch then draws from (seed, step)
    job = JOBS[recipe.job or recipe.name](recipe, work)
    parameters = [parameter for module in job.trained.values() for parameter in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=0.0)
    ema = {name: copy.deepcopy(module).requires_grad_(False) for name, module in job.trained.items()}
    checkpoint, start, seconds = folder / "checkpoint.pt", 0, 0.0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        for name, module in job.trained.items():
            module.load_state_dict(state["trained"][name])
            ema[name].load_state_dict(state["ema"][name])
        optimizer.load_state_dict(state["optimizer"])
        start, seconds = state["step"], state["seconds"]
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        log(f"[{recipe.name}] resuming at step {start}/{recipe.iterations}")
    for module in job.trained.values():
        module.train()
    began, losses = time.perf_counter() - seconds, []
    for step in range(start, recipe.iterations):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(recipe, step)
        loss = job.loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        _update_ema(ema, job.trained, recipe.ema_decay, step)
        losses.append(loss.item())
        done = step + 1
        if done % recipe.log_every == 0 or done == recipe.iterations:
            elapsed = time.perf_counter() - began
            rate = (done - start) / max(elapsed - seconds, 1e-9)
            log(
                f"[{recipe.name}] {done}/{recipe.iterations} loss {np.mean(losses[-recipe.log_every :]):.4f} "
                f"{rate * recipe.batch_size:.0f} img/s, {elapsed / 60:.1f} min, eta {(recipe.iterations - done) / rate / 60:.1f} min"
            )
        if done % recipe.checkpoint_every == 0 or done == recipe.iterations:
            _save_checkpoint(checkpoint, job, ema, optimizer, done, time.perf_counter() - began)
    seconds = time.perf_counter() - began
    flops_per_iteration = training_step_flops(job, recipe.iterations)
    staging = folder / "final.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    evaluation = job.export(ema, staging)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    summary = {
        "recipe": asdict(recipe),
        "images_seen": recipe.iterations * recipe.batch_size,
        "training_flops": flops_per_iteration * recipe.iterations,
        "wall_seconds": round(seconds, 1),
        "parameters": {name: sum(p.numel() for p in module.parameters()) for name, module in ema.items()},
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        **evaluation,
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"[{recipe.name}] done in {seconds / 60:.1f} min: {json.dumps(evaluation)}")
    return summary


def training_step_flops(job: Job, step: int) -> int:
    """FLOPs of one training step (forward and backward, frozen parts included), by the suite's counter.

    The step is run on a batch past the last one trained; its gradients are discarded.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        job.loss(step).backward()
    for module in job.trained.values():
        module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


@torch.no_grad()
def _update_ema(ema: dict, trained: dict, decay: float, step: int) -> None:
    """Exponential moving average with the usual warm-up (decay grows as (1 + n) / (10 + n)); decay 0 copies."""
    effective = min(decay, (1 + step) / (10 + step))
    for name, module in trained.items():
        for averaged, current in zip(ema[name].parameters(), module.parameters()):
            averaged.lerp_(current.detach(), 1 - effective)
        for averaged, current in zip(ema[name].buffers(), module.buffers()):
            averaged.copy_(current)


def run_track(names: tuple[str, ...], work: str, threads: int) -> list[dict]:
    """One process's share: its recipes in order, with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    recipes = {**RECIPES, **ABLATION_RECIPES}
    return [run_recipe(recipes[name], Path(work), lambda line: print(line, flush=True)) for name in names]


def assemble(work: Path, out: Path) -> None:
    """Lay the finished models out as the shipped presets + evaluator, with training.json."""
    layout = {
        "toy-latent": {
            "vae": "vae/final/vae",
            "unet": "latent/final/unet",
            "text_encoder": "latent/final/text_encoder",
            "tokenizer": "latent/final/tokenizer",
            "scheduler": "latent/final/scheduler",
        },
        "toy-cascaded/stage_1": {
            name: f"base/final/{name}" for name in ("unet", "text_encoder", "tokenizer", "scheduler")
        },
        "toy-cascaded/stage_2": {
            name: f"super_resolution/final/{name}" for name in ("unet", "scheduler", "image_noising_scheduler")
        },
        "toy-clip": {"": "clip/final"},
    }
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for target, parts in layout.items():
        for name, source in parts.items():
            shutil.copytree(work / source, staging / target / name)
    summaries = {name: json.loads((work / name / "summary.json").read_text()) for name in RECIPES}
    (staging / "training.json").write_text(json.dumps(summaries, indent=2) + "\n")
    if (out / "ablation").is_dir():  # the ablation's cells are trained and assembled on their own
        shutil.copytree(out / "ablation", staging / "ablation")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def _run_tracks(tracks: tuple[tuple[str, ...], ...], work: Path, jobs: int) -> None:
    """Run the tracks one after another (``jobs`` <= 1) or in parallel processes sharing the cores."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    if jobs <= 1:
        for track in tracks:
            run_track(track, str(work), cores)
        return
    threads = max(1, cores // len(tracks))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(tracks), mp_context=context) as pool:
        for future in [pool.submit(run_track, track, str(work), threads) for track in tracks]:
            future.result()


def train_toy(work: Path, out: Path, jobs: int = 2) -> None:
    """Run every recipe (tracks in parallel when ``jobs`` > 1), then assemble the shipped folder."""
    _run_tracks(TRACKS, work, jobs)
    assemble(work, out)


def assemble_ablation(work: Path, out: Path) -> None:
    """Lay the four cells out as ``out/<cell>/`` (the shared VAE and SR stay where they ship) + training.json."""
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for cell in ABLATION_CELLS:
        shutil.copytree(work / cell / "final", staging / cell)
    summaries = {cell: json.loads((work / cell / "summary.json").read_text()) for cell in ABLATION_CELLS}
    (staging / "training.json").write_text(json.dumps(summaries, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def train_ablation(work: Path, out: Path, jobs: int = 2) -> None:
    """Train the 2x2 ablation's four cells to one budget (two balanced tracks), then assemble them."""
    _run_tracks(ABLATION_TRACKS, work, jobs)
    assemble_ablation(work, out)
