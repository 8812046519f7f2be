"""The recipes of ``suite train toy``: each model's training budget, and the tracks they run in."""

from __future__ import annotations

from dataclasses import dataclass


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
    job: str = ""  # the key of the Job that trains it in jobs.JOBS; empty: the recipe's name


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
