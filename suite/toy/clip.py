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
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from suite.model import builders
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


def text_tower_as_transformers(model: torch.nn.Module) -> tuple[CLIPTextModelWithProjection, CLIPTokenizer]:
    """The toy CLIP's text tower as ``CLIPTextModelWithProjection`` + ``CLIPTokenizer``: what unCLIP reads.

    The weights are copied unchanged; the tokenizer is the toy world's word-level CLIP tokenizer with
    ``model_max_length`` = the tower's 12 positions, and each of its word rows takes that word's toy-CLIP row.
    ``text_embeds`` then equals ``model.encode_text`` for every prompt of the grammar (the pooled token is the
    first end-of-text, as open_clip's argmax pooling finds it). open_clip drops words it does not know; this
    tokenizer spells them in letters, whose rows are toy-CLIP's padding row.
    """
    tokenizer = builders.word_level_clip_tokenizer(list(WORDS))
    tokenizer.model_max_length = CONTEXT_LENGTH
    width = MODEL_CONFIG["text_cfg"]["width"]
    encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=int(width * 4),
            num_hidden_layers=MODEL_CONFIG["text_cfg"]["layers"],
            num_attention_heads=MODEL_CONFIG["text_cfg"]["heads"],
            max_position_embeddings=CONTEXT_LENGTH,
            projection_dim=MODEL_CONFIG["embed_dim"],
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    source = {name: tensor.float() for name, tensor in model.state_dict().items()}
    rows = torch.zeros(len(tokenizer), width)
    rows[:] = source["token_embedding.weight"][PAD]
    for word, index in VOCABULARY.items():
        rows[tokenizer.convert_tokens_to_ids(word + "</w>")] = source["token_embedding.weight"][index]
    rows[tokenizer.bos_token_id] = source["token_embedding.weight"][START]
    rows[tokenizer.eos_token_id] = source["token_embedding.weight"][END]
    state = {
        "text_model.embeddings.token_embedding.weight": rows,
        "text_model.embeddings.position_embedding.weight": source["positional_embedding"],
        "text_model.final_layer_norm.weight": source["ln_final.weight"],
        "text_model.final_layer_norm.bias": source["ln_final.bias"],
        "text_projection.weight": source["text_projection"].T,
    }
    for layer in range(MODEL_CONFIG["text_cfg"]["layers"]):
        old, new = f"transformer.resblocks.{layer}.", f"text_model.encoder.layers.{layer}."
        for part, weight in zip("qkv", source[old + "attn.in_proj_weight"].chunk(3)):
            state[new + f"self_attn.{part}_proj.weight"] = weight
        for part, bias in zip("qkv", source[old + "attn.in_proj_bias"].chunk(3)):
            state[new + f"self_attn.{part}_proj.bias"] = bias
        pairs = {
            "attn.out_proj": "self_attn.out_proj",
            "ln_1": "layer_norm1",
            "ln_2": "layer_norm2",
            "mlp.c_fc": "mlp.fc1",
            "mlp.c_proj": "mlp.fc2",
        }
        for before, after in pairs.items():
            for kind in ("weight", "bias"):
                state[new + f"{after}.{kind}"] = source[old + f"{before}.{kind}"]
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if unexpected or [name for name in missing if "position_ids" not in name]:
        raise RuntimeError(f"toy CLIP -> transformers: missing {missing}, unexpected {unexpected}")
    return encoder.eval().requires_grad_(False), tokenizer
