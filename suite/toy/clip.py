"""The toy world's CLIP: an open_clip model (ViT image tower, text transformer) trained on the toy pairs.

It is the toy world's CLIP-score model and its FID/KID feature network, as FID on MNIST uses a
domain network. Its config follows open_clip's model-config schema and loads through
``open_clip.create_model`` with a safetensors checkpoint, like any open_clip model.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

from suite.toy.world import IMAGE_SIZE, WORDS

NAME = "toy-clip"
CONFIG_FILE = f"{NAME}.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
CONTEXT_LENGTH = 12
# open_clip pools the text tower at the highest token id, so end-of-text must be the largest id.
PAD, START, END = 0, len(WORDS) + 1, len(WORDS) + 2
VOCABULARY = {word: index + 1 for index, word in enumerate(WORDS)}
MODEL_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "layers": 4,
        "width": 128,
        "head_width": 32,
        "patch_size": 8,
        "mlp_ratio": 4.0,
    },
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": END + 1, "width": 128, "heads": 4, "layers": 2},
}


def tokenize(prompts: list[str]) -> tuple[torch.Tensor, int]:
    """Word-level token ids (start, words, end, padding) and how many prompts were truncated."""
    rows, truncated = [], 0
    for prompt in prompts:
        words = [VOCABULARY[word] for word in prompt.lower().replace(".", " ").split() if word in VOCABULARY]
        if len(words) > CONTEXT_LENGTH - 2:
            words, truncated = words[: CONTEXT_LENGTH - 2], truncated + 1
        ids = [START, *words, END]
        rows.append(ids + [PAD] * (CONTEXT_LENGTH - len(ids)))
    return torch.tensor(rows, dtype=torch.long), truncated


def build() -> torch.nn.Module:
    """A randomly initialised toy CLIP (open_clip's CLIP class from MODEL_CONFIG)."""

    return CLIP(
        MODEL_CONFIG["embed_dim"], CLIPVisionCfg(**MODEL_CONFIG["vision_cfg"]), CLIPTextCfg(**MODEL_CONFIG["text_cfg"])
    )


def save(model: torch.nn.Module, folder: Path) -> None:
    """The open_clip model config (open_clip's schema) and fp16 safetensors weights."""

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(MODEL_CONFIG, indent=2) + "\n")
    state = {name: tensor.detach().half().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE)


def load(folder: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Through open_clip's own factory: register the config, then create the model with the checkpoint."""

    folder = Path(folder)
    open_clip.add_model_config(folder / CONFIG_FILE)
    model = open_clip.create_model(NAME, pretrained=str(folder / WEIGHTS_FILE), device=device)
    return model.eval().requires_grad_(False)
