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
    # steps at which the EMA weights are also exported (as ``snapshot-<step>``). With a constant
    # learning rate after warm-up (no cosine decay) a snapshot equals the same recipe trained to that step.
    snapshots: tuple[int, ...] = ()


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
# unCLIP's prior and decoder read the toy CLIP (frozen, as DALL-E 2's are), so they train after the tracks
# above, in two tracks of their own; the decoder matches the ablation's pixel cells' budget (160,000 images).
UNCLIP_RECIPES = {
    "prior": Recipe("prior", iterations=5000, batch_size=32, learning_rate=5e-4, seed=9),
    "decoder": Recipe("decoder", iterations=5000, batch_size=32, learning_rate=5e-4, seed=10, caption_dropout=0.5),
}
UNCLIP_TRACKS = (("prior",), ("decoder",))

# The 2x2 ablation {latent, pixel} x {CLIP-style, T5-style}: one recipe for all four cells, so
# they see the same images and captions in the same order, with the same optimiser, learning-rate
# schedule, EMA, caption dropout and noise seed. Only the denoiser's space and the text encoder differ.
# Each cell is trained three times (training seeds 6, 7, 8: initial weights, batches and noise all
# follow the seed), so effects can be stated over training runs, not only for one network per cell.
ABLATION_CELLS = ("latent-clip", "latent-t5", "pixel-clip", "pixel-t5")
ABLATION_SEEDS = (6, 7, 8)  # the first is the original run; its recipes keep the bare cell name
_ABLATION_BUDGET = {"iterations": 5000, "batch_size": 32, "learning_rate": 5e-4}

# A pixel cell's training step costs 1.75-1.80x a latent cell's (the suite's FLOP counter). The step at
# which a pixel cell has spent its latent twin's whole budget: latent-<encoder> training_flops over
# pixel-<encoder> FLOPs per iteration, both from training.json (checked by a test). The seed-7 pixel
# runs export their EMA weights there, giving one compute-matched comparison beside the image-matched one.
COMPUTE_MATCHED_STEPS = {"pixel-clip": 2783, "pixel-t5": 2860}
COMPUTE_MATCHED_SEED = 7


def replicate_name(cell: str, seed: int) -> str:
    """The recipe (and weights folder) of one training run of a cell: ``pixel-t5``, ``pixel-t5-seed7``."""
    return cell if seed == ABLATION_SEEDS[0] else f"{cell}-seed{seed}"


def snapshot_name(recipe: str, step: int) -> str:
    return f"{recipe}-step{step}"


def _ablation_recipe(cell: str, seed: int) -> Recipe:
    matched = cell in COMPUTE_MATCHED_STEPS and seed == COMPUTE_MATCHED_SEED
    snapshots = (COMPUTE_MATCHED_STEPS[cell],) if matched else ()
    return Recipe(replicate_name(cell, seed), job=cell, seed=seed, snapshots=snapshots, **_ABLATION_BUDGET)


ABLATION_RECIPES = {
    replicate_name(cell, seed): _ablation_recipe(cell, seed) for seed in ABLATION_SEEDS for cell in ABLATION_CELLS
}


def ablation_tracks(seeds: int) -> tuple[tuple[str, ...], ...]:
    """Two tracks of equal work for the first ``seeds`` training seeds, each seed's runs before the next seed's."""
    chosen = ABLATION_SEEDS[:seeds]
    pairs = (("latent-clip", "pixel-t5"), ("latent-t5", "pixel-clip"))
    return tuple(tuple(replicate_name(cell, seed) for seed in chosen for cell in pair) for pair in pairs)
