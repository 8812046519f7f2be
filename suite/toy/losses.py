"""Training objectives of the toy models: epsilon prediction with Min-SNR weighting, plus IF's learned variance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler


def _gather(values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    return values.to(timesteps.device)[timesteps].float().view(-1, 1, 1, 1)


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weights min(SNR, gamma) / SNR for epsilon prediction (Hang et al. 2023, Min-SNR)."""
    alphas_cumprod = _gather(scheduler.alphas_cumprod, timesteps).view(-1)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return torch.clamp(snr, max=gamma) / snr


def epsilon_loss(
    scheduler: DDPMScheduler, predicted: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    per_sample = F.mse_loss(predicted.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    return (min_snr_weights(scheduler, timesteps) * per_sample).mean()


def learned_range_vlb(
    scheduler: DDPMScheduler,
    model_variance: torch.Tensor,
    predicted_noise: torch.Tensor,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits per dimension, training only the variance.

    Improved DDPM (Nichol & Dhariwal 2021, eq. 15 and L_hybrid): the mean uses the detached noise
    prediction; the log-variance interpolates between the posterior's and beta_t with
    ``frac = (v + 1) / 2``, exactly as diffusers' DDPMScheduler reads a ``learned_range`` output.
    t = 0 is excluded (its posterior variance is 0).
    """
    alphas_cumprod = scheduler.alphas_cumprod.to(clean.device)
    alpha_t = _gather(alphas_cumprod, timesteps)
    previous = torch.where(timesteps > 0, timesteps - 1, torch.zeros_like(timesteps))
    alpha_prev = torch.where(
        timesteps.view(-1, 1, 1, 1) > 0, _gather(alphas_cumprod, previous), torch.ones_like(alpha_t)
    )
    beta_t = 1 - alpha_t / alpha_prev
    posterior_variance = torch.clamp((1 - alpha_prev) / (1 - alpha_t) * beta_t, min=1e-20)
    coefficient_clean = beta_t * alpha_prev.sqrt() / (1 - alpha_t)
    coefficient_noisy = (1 - alpha_prev) * (1 - beta_t).sqrt() / (1 - alpha_t)
    true_mean = coefficient_clean * clean + coefficient_noisy * noisy
    predicted_clean = (noisy - (1 - alpha_t).sqrt() * predicted_noise.detach()) / alpha_t.sqrt()
    model_mean = coefficient_clean * predicted_clean + coefficient_noisy * noisy
    fraction = (model_variance.float() + 1) / 2
    model_log_variance = fraction * torch.log(beta_t) + (1 - fraction) * torch.log(posterior_variance)
    true_log_variance = torch.log(posterior_variance)
    kl = 0.5 * (
        -1
        + model_log_variance
        - true_log_variance
        + torch.exp(true_log_variance - model_log_variance)
        + (true_mean - model_mean) ** 2 * torch.exp(-model_log_variance)
    )
    kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
    return (kl * (timesteps > 0).float()).mean()
