"""The toy world: flat coloured shapes on a light background, with captions, deterministic from a seed.

It gives the toy models their training data, the sweeps their prompts and FID its reference
set. Scenes hold one object ("a red circle") or two in a relation ("a red circle above a blue
square"). Images are drawn at 4x and box-filtered to 64 px (anti-aliased edges, flat interiors).
Nothing is flipped: a horizontal flip would swap "left of" and "right of".
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4
BACKGROUND = (236, 236, 230)
COLOURS = {"red": (214, 48, 49), "green": (46, 160, 67), "blue": (38, 84, 214), "yellow": (238, 196, 24)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left of", "right of")
WORDS = ("a", *COLOURS, *SHAPES, "above", "below", "left", "right", "of")
SINGLE_SIZE = (16, 30)  # object side in pixels at 64 px, single-object scenes
PAIR_SIZE = (14, 24)
SINGLE_FRACTION = 0.25  # share of single-object scenes in training batches
HELD_OUT_FRACTION = 0.1  # pair captions never shown in training: compositional generalisation


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str

    @property
    def text(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Caption:
    """One object, or two objects in a spatial relation (``first`` RELATION ``second``)."""

    things: tuple[Thing, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        if self.relation is None:
            return f"a {self.things[0].text}"
        return f"a {self.things[0].text} {self.relation} a {self.things[1].text}"

    @property
    def scene(self) -> tuple:
        """What the caption says about the image: "A below B" and "B above A" describe the same scenes."""
        if self.relation is None:
            return (self.things[0],)
        first, second = self.things
        converse = {"below": "above", "right of": "left of"}
        if self.relation in converse:
            return (second, first, converse[self.relation])
        return (first, second, self.relation)

    @property
    def held_out(self) -> bool:
        """A fixed tenth of the pair captions, chosen by hash, is never used for training."""
        if self.relation is None:
            return False
        digest = hashlib.sha256(self.text.encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < HELD_OUT_FRACTION


THINGS = tuple(Thing(colour, shape) for colour in COLOURS for shape in SHAPES)


def all_captions() -> list[Caption]:
    """Every caption of the world: 12 single objects and 132 ordered pairs x 4 relations."""
    singles = [Caption((thing,)) for thing in THINGS]
    pairs = [
        Caption((first, second), relation)
        for first, second in itertools.permutations(THINGS, 2)
        for relation in RELATIONS
    ]
    return singles + pairs


def training_captions() -> tuple[list[Caption], list[Caption]]:
    """(single-object captions, pair captions) the models are trained on: held-out pairs excluded."""
    captions = all_captions()
    return ([c for c in captions if c.relation is None], [c for c in captions if c.relation and not c.held_out])


def parse_caption(text: str) -> Caption | None:
    """The Caption a prompt describes, or None if it is not in the world's grammar."""
    words = text.lower().strip().rstrip(".").split()
    if len(words) == 3 and words[0] == "a":
        thing = _thing(words[1:3])
        return Caption((thing,)) if thing else None
    for relation in RELATIONS:
        relation_words = relation.split()
        cut = 3 + len(relation_words)
        if len(words) == cut + 3 and words[0] == "a" and words[3:cut] == relation_words and words[cut] == "a":
            first, second = _thing(words[1:3]), _thing(words[cut + 1 : cut + 3])
            if first and second and first != second:
                return Caption((first, second), relation)
    return None


def _thing(words: list[str]) -> Thing | None:
    colour, shape = words
    return Thing(colour, shape) if colour in COLOURS and shape in SHAPES else None


@dataclass(frozen=True)
class Placement:
    thing: Thing
    centre: tuple[float, float]  # x, y in pixels at 64 px
    size: float  # side of the bounding box


def _relation_holds(relation: str, first: Placement, second: Placement) -> bool:
    """Clearly in the relation: separated along its axis, and more offset along it than across it."""
    dx, dy = second.centre[0] - first.centre[0], second.centre[1] - first.centre[1]
    gap = (first.size + second.size) / 2 + 2
    along, across = {"above": (dy, dx), "below": (-dy, dx), "left of": (dx, dy), "right of": (-dx, dy)}[relation]
    return along >= gap and abs(across) <= along / 2


def layout(caption: Caption, rng: np.random.Generator) -> list[Placement]:
    """Random sizes and positions consistent with the caption (rejection sampling)."""
    low, high = SINGLE_SIZE if caption.relation is None else PAIR_SIZE
    while True:
        placements = []
        for thing in caption.things:
            size = float(rng.uniform(low, high))
            margin = size / 2 + 1
            centre = (float(rng.uniform(margin, IMAGE_SIZE - margin)), float(rng.uniform(margin, IMAGE_SIZE - margin)))
            placements.append(Placement(thing, centre, size))
        if caption.relation is None or _relation_holds(caption.relation, *placements):
            return placements


def render(placements: list[Placement]) -> np.ndarray:
    """A 64x64x3 uint8 image of the placed objects."""
    scale = SUPERSAMPLE
    canvas = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for placement in placements:
        (x, y), half = placement.centre, placement.size / 2
        box = [(x - half) * scale, (y - half) * scale, (x + half) * scale, (y + half) * scale]
        colour = COLOURS[placement.thing.colour]
        if placement.thing.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif placement.thing.shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            left, top, right, bottom = box
            draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=colour)
    return np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX))


def draw_caption(caption: Caption, rng: np.random.Generator) -> np.ndarray:
    return render(layout(caption, rng))


def sample_captions(rng: np.random.Generator, count: int, include_held_out: bool = False) -> list[Caption]:
    """Training-distribution captions: a quarter single objects, the rest pairs (held-out pairs excluded)."""
    singles, pairs = training_captions()
    if include_held_out:
        pairs = [caption for caption in all_captions() if caption.relation]
    return [
        singles[rng.integers(len(singles))] if rng.random() < SINGLE_FRACTION else pairs[rng.integers(len(pairs))]
        for _ in range(count)
    ]


def sample_batch(seed: int, count: int, include_held_out: bool = False) -> tuple[np.ndarray, list[str]]:
    """``count`` images (N x 64 x 64 x 3 uint8) and their captions, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    captions = sample_captions(rng, count, include_held_out)
    images = np.stack([draw_caption(caption, rng) for caption in captions])
    return images, [caption.text for caption in captions]


def evaluation_prompts() -> list[str]:
    """The toy prompt set: every single object, pairs over every relation, attribute-binding swaps, held-out pairs.

    64 prompts: 12 single objects; 24 pairs (6 per relation); 8 binding pairs (4 swapped couples such
    as "a red circle above a blue square" / "a blue circle above a red square"); 20 held-out pairs.
    """
    rng = np.random.default_rng(2024)
    singles = [Caption((thing,)).text for thing in THINGS]
    seen = [caption for caption in all_captions() if caption.relation and not caption.held_out]
    held_out = [caption for caption in all_captions() if caption.held_out]
    pairs = []
    for relation in RELATIONS:
        candidates = [caption for caption in seen if caption.relation == relation]
        pairs += [candidates[index].text for index in rng.choice(len(candidates), 6, replace=False)]
    binding = []
    for relation in RELATIONS:
        first, second = _binding_couple(rng, relation, seen)
        binding += [first.text, second.text]
    chosen_held_out = [held_out[index].text for index in rng.choice(len(held_out), 20, replace=False)]
    prompts = singles + pairs + binding + chosen_held_out
    assert len(set(prompts)) == len(prompts) == 64
    return prompts


def every_prompt() -> list[str]:
    """Every caption of the world's grammar once, in a fixed shuffled order (the ``toy-all`` prompt set).

    540 prompts: 12 single objects, 463 seen pairs and 65 held-out pairs (categories by ``prompt_category``).
    The grammar has no more distinct captions, so no toy prompt set can hold more distinct prompts; the
    order is a seeded permutation, so the first n (``prompts: {set: toy-all, limit: n}``) are a simple
    random sample of the captions, each category in about its share.
    """
    captions = [caption.text for caption in all_captions()]
    order = np.random.default_rng(2026).permutation(len(captions))
    return [captions[index] for index in order]


def _binding_couple(rng: np.random.Generator, relation: str, seen: list[Caption]) -> tuple[Caption, Caption]:
    """Two seen captions that swap colours between the same two shapes in the same relation."""
    seen_texts = {caption.text for caption in seen}
    while True:
        colour_a, colour_b = rng.choice(list(COLOURS), 2, replace=False)
        shape_a, shape_b = rng.choice(SHAPES, 2, replace=False)
        first = Caption((Thing(colour_a, shape_a), Thing(colour_b, shape_b)), relation)
        second = Caption((Thing(colour_b, shape_a), Thing(colour_a, shape_b)), relation)
        if first.text in seen_texts and second.text in seen_texts:
            return first, second


def prompt_category(text: str) -> str:
    """single, pair or held-out pair (a caption outside the grammar is 'other')."""
    caption = parse_caption(text)
    if caption is None:
        return "other"
    if caption.relation is None:
        return "single"
    return "held-out pair" if caption.held_out else "pair"
