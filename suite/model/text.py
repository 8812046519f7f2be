"""Text encoders, adapted once at the boundary, and a per-run cache of prompt embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

NEGATIVE_PROMPT = ""  # the unconditional prompt of classifier-free guidance, as in diffusers' pipelines


@dataclass
class TextEncoder:
    """A tokenizer + transformers encoder producing per-token embeddings for cross-attention.

    Mirrors the diffusers pipelines: CLIP (Stable Diffusion) pads to 77 tokens and passes no
    attention mask; T5 (DeepFloyd IF) lower-cases and strips the prompt (``clean_caption=False``),
    pads to 77 tokens and passes the attention mask; PixArt-alpha's T5 does the same at 120 tokens.
    unCLIP (``pooled=True``) reads CLIP's per-token states and its projected pooled embedding: the encoder then
    gives a pair ``(hidden states, pooled)``, and the cache keeps and stacks both.
    """

    name: str
    tokenizer: object
    model: torch.nn.Module
    max_length: int = 77
    lowercase: bool = False
    use_attention_mask: bool = False
    pooled: bool = False

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.lowercase:
            prompts = [prompt.lower().strip() for prompt in prompts]
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )

    def attention_mask(self, prompts: list[str]) -> torch.Tensor:
        """Which of each prompt's ``max_length`` tokens are real (1) or padding (0): what a denoiser that reads the
        mask (PixArt-alpha's transformer) masks out of cross-attention."""
        return self.tokenize(prompts).attention_mask

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenize(prompts)
        device = next(self.model.parameters()).device
        mask = tokens.attention_mask.to(device) if self.use_attention_mask else None
        output = self.model(tokens.input_ids.to(device), attention_mask=mask)
        if self.pooled:  # CLIPTextModelWithProjection: (text_embeds, last_hidden_state, ...)
            return output.last_hidden_state, output.text_embeds
        return output[0]


@dataclass
class EmbeddingCache:
    """Embeddings of each unique prompt, computed once per encoder and reused across the grid."""

    encoder: TextEncoder
    batch_size: int = 16
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds_per_prompt: dict[str, float] = field(default_factory=dict)

    def encode(self, needed: list[str], universe: list[str], clock) -> None:
        """Encode the prompts in ``needed`` that are not cached yet.

        Prompts are encoded in fixed blocks of ``universe`` (every prompt of the run, in order),
        so an embedding's bits never depend on which prompts a shard or a resumed run still needs.
        """
        ordered = list(dict.fromkeys(universe))
        wanted = {prompt for prompt in needed if prompt not in self.embeddings}
        for start in range(0, len(ordered), self.batch_size):
            block = ordered[start : start + self.batch_size]
            if not wanted.intersection(block):
                continue
            began = clock()
            embeds = self.encoder(block)
            elapsed = clock() - began
            rows = zip(*embeds) if isinstance(embeds, tuple) else embeds  # a pooled encoder: one pair per prompt
            for prompt, embed in zip(block, rows):
                self.embeddings[prompt] = embed
                self.seconds_per_prompt[prompt] = elapsed / len(block)

    def lookup(self, prompts: list[str]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The prompts' embeddings as one batch (a pooled encoder's: a batch of hidden states and one of pooled)."""
        rows = [self.embeddings[prompt] for prompt in prompts]
        if isinstance(rows[0], tuple):
            return tuple(torch.stack(part) for part in zip(*rows))
        return torch.stack(rows)
