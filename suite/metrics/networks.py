"""Feature networks (FID / KID / CMMD) and CLIP models (CLIP score), adapted once at the boundary.

Every network takes uint8 NCHW images, so how an image is quantised never differs between
generated and reference sets, and says how it resizes them: the resize is part of what the
number means (clean-fid), and is recorded next to every metric.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.image.fid import NoTrainInceptionV3

from suite.core.errors import UserError
from suite.core.registry import Registry
from suite.model.presets import TOY_WEIGHTS
from suite.toy import clip

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class NetworkContext:
    """Where weights are found and where networks run."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    inception_weights: Path | None = None  # else $SUITE_INCEPTION_WEIGHTS, else the torch hub cache


class FeatureNetwork(torch.nn.Module):
    """uint8 NCHW images -> (N, d) float features. ``describe`` is recorded with every number it gives."""

    def __init__(self, name: str, model_id: str, resize: str, num_features: int, extract: Callable):
        super().__init__()
        self.name, self.model_id, self.resize, self.num_features = name, model_id, resize, num_features
        self.extract = extract

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError("feature networks take uint8 images; quantise by rounding first")
        return self.extract(images).float()

    def describe(self) -> dict[str, str | int]:
        return {"network": self.name, "model": self.model_id, "resize": self.resize, "num_features": self.num_features}


@dataclass
class ClipModel:
    """An open_clip-style model with its tokenizer and image preprocessing, for CLIP score and CMMD."""

    name: str
    model_id: str  # architecture and pretrained tag
    model: torch.nn.Module
    tokenize: Callable[[list[str]], tuple[torch.Tensor, int]]  # ids and how many prompts were truncated
    preprocess: Callable[[torch.Tensor], torch.Tensor]  # uint8 NCHW -> model input
    resize: str

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_image(self.preprocess(images).to(device)).float().cpu()

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> tuple[torch.Tensor, int]:
        tokens, truncated = self.tokenize(prompts)
        device = next(self.model.parameters()).device
        return self.model.encode_text(tokens.to(device)).float().cpu(), truncated

    def feature_network(self, name: str) -> FeatureNetwork:
        probe = self.image_embeddings(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
        return FeatureNetwork(name, self.model_id, self.resize, probe.shape[-1], self.image_embeddings)


def resize_and_normalise(size: int, mean: tuple[float, ...], std: tuple[float, ...], mode: str = "bicubic") -> Callable:
    """uint8 -> float in [0, 1] -> resized with antialiasing (square images) -> normalised."""
    mean_tensor, std_tensor = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() / 255
        if pixels.shape[-1] != size or pixels.shape[-2] != size:
            pixels = F.interpolate(pixels, size=(size, size), mode=mode, antialias=True, align_corners=False).clamp(
                0, 1
            )
        return (pixels - mean_tensor) / std_tensor

    return preprocess


def open_clip_tokenizer(model_name: str, context_length: int) -> Callable[[list[str]], tuple[torch.Tensor, int]]:
    """open_clip's tokenizer, truncating at the context length and counting the prompts it truncated."""

    tokenizer = open_clip.get_tokenizer(model_name)

    def tokenize(prompts: list[str]) -> tuple[torch.Tensor, int]:
        encoder = getattr(tokenizer, "encode", None)
        truncated = 0 if encoder is None else sum(len(encoder(prompt)) + 2 > context_length for prompt in prompts)
        return tokenizer(prompts), truncated

    return tokenize


def _openai_vit_l_14(context: NetworkContext) -> ClipModel:
    """open_clip ViT-L-14 with OpenAI's weights (open_clip fetches them from its usual hub cache)."""

    try:
        model = open_clip.create_model("ViT-L-14", pretrained="openai", device=context.device)
    except Exception as error:
        raise UserError(
            f"CLIP model ViT-L-14 (pretrained 'openai') is not available offline: {error}".splitlines()[0]
        ) from None
    model = model.eval().requires_grad_(False)
    return ClipModel(
        "openai-vit-l-14",
        "open_clip ViT-L-14 / openai",
        model,
        open_clip_tokenizer("ViT-L-14", 77),
        resize_and_normalise(224, OPENAI_MEAN, OPENAI_STD),
        "bicubic-224-antialias",
    )


def _toy_clip(context: NetworkContext) -> ClipModel:
    """The toy world's CLIP (suite.toy.clip), trained by `suite train toy`."""

    folder = TOY_WEIGHTS / "toy-clip"
    if not (folder / clip.WEIGHTS_FILE).is_file():
        raise UserError(f"the toy CLIP is missing from {folder}; rebuild it with `suite train toy`")
    model = clip.load(folder, context.device)
    size = clip.MODEL_CONFIG["vision_cfg"]["image_size"]
    return ClipModel(
        "toy-clip",
        f"open_clip toy CLIP ({folder.name})",
        model,
        clip.tokenize,
        resize_and_normalise(size, (0.5,) * 3, (0.5,) * 3, mode="bilinear"),
        f"bilinear-{size}-antialias",
    )


CLIP_MODELS: Registry[Callable[[NetworkContext], ClipModel]] = Registry("CLIP model")
CLIP_MODELS.register("openai-vit-l-14", _openai_vit_l_14)
CLIP_MODELS.register("toy-clip", _toy_clip)


def inception_weights_path(context: NetworkContext) -> Path:
    """The FID InceptionV3 weights: an explicit path, $SUITE_INCEPTION_WEIGHTS, or torch hub's cache."""
    if context.inception_weights is not None:
        path = Path(context.inception_weights)
    elif os.environ.get("SUITE_INCEPTION_WEIGHTS"):
        path = Path(os.environ["SUITE_INCEPTION_WEIGHTS"])
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        raise UserError(
            f"FID/KID feature network 'inception' needs {INCEPTION_FILE} (torch-fidelity's InceptionV3 FID weights, "
            f"normally downloaded from {INCEPTION_URL}); not found at {path}: pass --inception-weights PATH"
        )
    return path


def _inception(context: NetworkContext) -> FeatureNetwork:
    """torch-fidelity's InceptionV3 port (as torchmetrics uses it): pool3, 2048 features, TF1 bilinear to 299."""

    path = inception_weights_path(context)
    network = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
    ).to(context.device)

    def extract(images: torch.Tensor) -> torch.Tensor:
        return network(images.to(context.device)).cpu()

    return FeatureNetwork(
        "inception",
        f"torch-fidelity InceptionV3 ({INCEPTION_FILE})",
        "tf1-bilinear-299 (torch-fidelity)",
        2048,
        extract,
    )


def clean_resize(images: torch.Tensor, size: int = 299) -> torch.Tensor:
    """clean-fid's "clean" resize (Parmar et al. 2022): PIL bicubic per channel on float values, here rounded back to
    uint8 so the Inception network's own input path is unchanged (at 299 its bilinear resize is the identity)."""

    resized = []
    for image in images.permute(0, 2, 3, 1).numpy():
        channels = [
            np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
            for c in range(3)
        ]
        resized.append(np.stack(channels, axis=-1))
    clipped = np.clip(np.round(np.stack(resized)), 0, 255).astype(np.uint8)
    return torch.from_numpy(clipped).permute(0, 3, 1, 2).contiguous()


def _inception_clean(context: NetworkContext) -> FeatureNetwork:
    """torch-fidelity's InceptionV3 with clean-fid's resize (PIL bicubic to 299), for FIDs comparable to clean-fid's."""
    inception = _inception(context)

    def extract(images: torch.Tensor) -> torch.Tensor:
        return inception.extract(clean_resize(images))

    return FeatureNetwork(
        "inception-clean", inception.model_id, "clean-fid pil-bicubic-299 (rounded to uint8)", 2048, extract
    )


def _clip_features(context: NetworkContext) -> FeatureNetwork:
    """open_clip ViT-L-14 (openai) image embeddings, 768 features, bicubic to 224 (CMMD's network)."""
    return _openai_vit_l_14(context).feature_network("clip")


def _toy_clip_features(context: NetworkContext) -> FeatureNetwork:
    """The toy world's CLIP image embeddings, 128 features, at the world's 64 px (as FID on MNIST uses a domain net)."""
    return _toy_clip(context).feature_network("toy-clip")


FEATURE_NETWORKS: Registry[Callable[[NetworkContext], FeatureNetwork]] = Registry("feature network")
FEATURE_NETWORKS.register("inception", _inception)
FEATURE_NETWORKS.register("inception-clean", _inception_clean)
FEATURE_NETWORKS.register("clip", _clip_features)
FEATURE_NETWORKS.register("toy-clip", _toy_clip_features)


def check_inception_weights(path: Path) -> None:
    """The InceptionV3 weights must load as a state dict (a junk or truncated file fails here, not after generation)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} is not torch-fidelity's InceptionV3 weights: {error}".splitlines()[0]) from None
    if not isinstance(state, dict) or not any(isinstance(value, torch.Tensor) for value in state.values()):
        raise UserError(f"{path} is not torch-fidelity's InceptionV3 weights (no tensors in it)")


def check_local_networks(names: set[str], context: NetworkContext) -> None:
    """Before generation: the local weights behind these feature networks and CLIP models load (one-line errors).

    InceptionV3 must be torch-fidelity's state dict; the toy CLIP must be in the package. Hub models are fetched
    when first used.
    """
    if names & {"inception", "inception-clean"}:
        check_inception_weights(inception_weights_path(context))
    if "toy-clip" in names:
        CLIP_MODELS.get("toy-clip")(context)
