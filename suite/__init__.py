"""A comparative research suite for text-to-image diffusion: latent vs cascaded."""

__version__ = "0.1.0"
