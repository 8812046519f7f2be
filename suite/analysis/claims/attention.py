"""Cross-attention maps per UNet resolution, recorded while a pipeline samples.

The recorder switches each cross-attention layer of a UNet to diffusers' classic processor (which
computes the attention probabilities explicitly through ``Attention.get_attention_scores``) and keeps
those probabilities, for the conditional half of a guided batch, averaged over heads, layers of one
resolution and denoising steps:

- Stable Diffusion-style UNets (``attn2`` of each transformer block): queries are latent positions,
  keys are the prompt's tokens, so each position's row is a distribution over tokens.
- DeepFloyd IF-style UNets (``AttnAddedKVProcessor``): the prompt's tokens are projected and
  prepended to the image's own keys, so each position's row is a distribution over text tokens and
  image positions together; the text part is kept, and ``text_mass`` records how much of the row it holds.

Averages of distributions are distributions, so every map keeps summing to 1 (with ``text_mass``).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from diffusers.models.attention_processor import Attention, AttnAddedKVProcessor, AttnProcessor

from suite.toy.score import MAX_COLOUR_DISTANCE, PALETTE, PALETTE_NAMES


def cross_attention_layers(unet: torch.nn.Module) -> dict[str, tuple[Attention, bool]]:
    """Cross-attention layers by name, each with whether its keys also hold the image (IF's added KV)."""
    layers = {}
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        if module.added_kv_proj_dim is not None:
            layers[name] = (module, True)
        elif name.endswith("attn2"):
            layers[name] = (module, False)
    return layers


class AttentionRecorder:
    """Context manager: while active, the UNet's cross-attention probabilities are accumulated per resolution."""

    def __init__(self, unet: torch.nn.Module, images: int):
        self.unet, self.images = unet, images
        self.layers = cross_attention_layers(unet)
        if not self.layers:
            raise ValueError("this UNet has no cross-attention layers")
        self._sums: dict[int, torch.Tensor] = {}
        self._mass: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = defaultdict(int)
        self._saved: list = []

    def __enter__(self) -> AttentionRecorder:
        for module, added_kv in self.layers.values():
            self._saved.append((module, module.processor))
            module.set_processor(AttnAddedKVProcessor() if added_kv else AttnProcessor())
            module.get_attention_scores = self._recording(module, added_kv)
        return self

    def __exit__(self, *exc) -> None:
        for module, processor in self._saved:
            del module.get_attention_scores  # back to the class's method
            module.set_processor(processor)
        self._saved.clear()

    def _recording(self, module: Attention, added_kv: bool):
        original = type(module).get_attention_scores.__get__(module)

        def get_attention_scores(query, key, attention_mask=None):
            probabilities = original(query, key, attention_mask)
            self._record(probabilities, module.heads, added_kv)
            return probabilities

        return get_attention_scores

    def _record(self, probabilities: torch.Tensor, heads: int, added_kv: bool) -> None:
        rows, queries, keys = probabilities.shape
        per_head = probabilities.float().reshape(rows // heads, heads, queries, keys).mean(dim=1)
        if per_head.shape[0] == 2 * self.images:  # guided batch: [unconditional; conditional]
            per_head = per_head[self.images :]
        text = keys - queries if added_kv else keys
        side = math.isqrt(queries)
        text_part = per_head[..., :text].detach().cpu()
        if side not in self._sums:
            self._sums[side] = torch.zeros_like(text_part, dtype=torch.float64)
            self._mass[side] = torch.zeros(text_part.shape[:2], dtype=torch.float64)
        self._sums[side] += text_part.double()
        self._mass[side] += text_part.double().sum(dim=-1)
        self._counts[side] += 1

    def maps(self) -> dict[int, np.ndarray]:
        """Per resolution side: (images, side, side, text tokens), averaged over heads, layers and steps."""
        return {
            side: (total / self._counts[side]).reshape(total.shape[0], side, side, -1).numpy()
            for side, total in sorted(self._sums.items())
        }

    def text_mass(self) -> dict[int, np.ndarray]:
        """Per resolution side: (images, side * side) share of each position's attention on text tokens."""
        return {side: (total / self._counts[side]).numpy() for side, total in sorted(self._mass.items())}


def token_positions(tokenizer, prompt: str, words: list[str], lowercase: bool = False) -> dict[str, list[int]]:
    """Indices of the tokens that spell each word's first occurrence in the tokenised prompt.

    Handles sentencepiece pieces (a word starts with "\u2581") and CLIP BPE pieces (a word ends with "</w>"),
    including words split into several pieces (the toy CLIP tokenizer spells "green" as g / re / e / n</w>).
    """
    text = prompt.lower().strip() if lowercase else prompt
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    spelled: list[tuple[str, list[int]]] = []  # (word, its token indices)
    for index, token in enumerate(tokens):
        starts = token.startswith("\u2581") or not spelled or spelled[-1][0].endswith("</w>")
        if starts:
            spelled.append((token, [index]))
        else:
            spelled[-1] = (spelled[-1][0] + token, [*spelled[-1][1], index])
    found: dict[str, list[int]] = {}
    for word, indices in spelled:
        clean = word.replace("</w>", "").replace("\u2581", "").lower()
        if clean in words and clean not in found:
            found[clean] = indices
    return found


def colour_masks(image: np.ndarray, colours: list[str]) -> dict[str, np.ndarray]:
    """Boolean H x W masks of the pixels nearest to each named palette colour (within the score's distance)."""

    distances = np.linalg.norm(image.astype(np.float32)[:, :, None, :] - PALETTE[None, None], axis=-1)
    labels = np.where(distances.min(axis=-1) <= MAX_COLOUR_DISTANCE, distances.argmin(axis=-1), -1)
    return {colour: labels == PALETTE_NAMES.index(colour) for colour in colours}


def downsample(mask: np.ndarray, side: int) -> np.ndarray:
    """A boolean mask as the fraction of each of side x side cells it covers."""
    size = mask.shape[0]
    factor = size // side
    return mask.reshape(side, factor, side, factor).mean(axis=(1, 3))


def bleed(attention: np.ndarray, own: np.ndarray, other: np.ndarray) -> float:
    """Share of a token's on-object attention that falls on the other object: 0 perfectly placed, 0.5 no preference.

    ``attention`` is one token's side x side map; ``own`` and ``other`` are the objects' coverage of each cell.
    """
    on_own, on_other = float((attention * own).sum()), float((attention * other).sum())
    if on_own + on_other <= 0:
        return math.nan
    return on_other / (on_own + on_other)
