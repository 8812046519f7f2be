"""Samplers: names mapped to diffusers scheduler classes, built from a model's own scheduler config.

A sampler never changes the model's noise schedule (betas, prediction type, thresholding): it is
built with ``SchedulerClass.from_config(model_scheduler_config, **overrides)``, the swap diffusers
documents, so the same trained model can be sampled by every solver. One rule of the model's is carried
over: a model whose scheduler clips each x0 prediction to [-1, 1] (unCLIP's decoder and upsamplers) gets
that clip as thresholding at 1 in solvers that can threshold, and is refused by those that can do neither.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from suite.core.registry import Registry

LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
# What defines a model's noise schedule. A key its config leaves out takes the default of the model's own scheduler
# class, not of the sampler's: Karlo's configs predate UnCLIPScheduler's beta_schedule key, whose default is cosine,
# while every other scheduler's default is linear.
SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


def with_schedule_defaults(model_scheduler_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with each missing noise-schedule key filled from its own class's (``_class_name``) defaults."""
    config = dict(model_scheduler_config)
    own = getattr(diffusers, str(config.get("_class_name", "")), None)
    if own is None:
        return config
    parameters = inspect.signature(own.__init__).parameters
    for key in SCHEDULE_KEYS:
        if key not in config and key in parameters and parameters[key].default is not inspect.Parameter.empty:
            config[key] = parameters[key].default
    return config


def _own_default(config: Mapping[str, Any], key: str) -> Any:
    """``key`` from the config, else its default in the config's own scheduler class (``_class_name``)."""
    if key in config:
        return config[key]
    own = getattr(diffusers, str(config.get("_class_name", "")), None)
    parameter = inspect.signature(own.__init__).parameters.get(key) if own is not None else None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def clips_x0_on_cosine(config: Mapping[str, Any]) -> bool:
    """Whether the model's own scheduler clips each x0 prediction to [-1, 1] on the cosine schedule without
    thresholding (unCLIP's decoder and upsamplers). Only there does a sampler's first step divide by
    sqrt(alpha_bar(T)) ~ 5e-5; on SD's scaled-linear betas (alpha_bar(T) ~ 5e-3) an unclipped x0 is harmless, and
    IF's configs threshold."""
    range_ = _own_default(config, "clip_sample_range")
    return (
        bool(_own_default(config, "clip_sample"))
        and float(1.0 if range_ is None else range_) == 1.0
        and _own_default(config, "beta_schedule") == "squaredcos_cap_v2"
        and not config.get("thresholding")
    )


def clipping_as_thresholding(config: Mapping[str, Any], scheduler_class: type) -> dict[str, Any]:
    """A model scheduler's ``clip_sample`` to [-1, 1] carried to a sampler that cannot clip but can threshold.

    unCLIP's decoder and upsamplers (``UnCLIPScheduler``, cosine betas) clip each x0 prediction to [-1, 1]. A sampler
    without ``clip_sample`` (DPM-Solver++, UniPC, DEIS) would otherwise take the raw x0, which at the schedule's first
    timestep (alpha_bar about 2e-9 on the cosine schedule) is the noise prediction's error times 2e4: the images come
    out as noise. Dynamic thresholding with ``sample_max_value`` 1 clamps to [-1, 1] and divides by 1, which is that
    clip exactly. Only a range of 1 on the cosine schedule translates (``clips_x0_on_cosine``: unCLIP's prior clips
    at 5, which thresholding would rescale; a config that already thresholds, IF's, keeps its own).
    """
    config = dict(config)
    parameters = inspect.signature(scheduler_class.__init__).parameters
    if clips_x0_on_cosine(config) and "thresholding" in parameters and "clip_sample" not in parameters:
        config.update(thresholding=True, sample_max_value=1.0)
    return config


@dataclass(frozen=True)
class Sampler:
    """A diffusers scheduler class plus the keyword arguments that make it this sampler."""

    scheduler_class: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    clipped_eps: bool = True  # DDIM: re-derive eps from the clipped x0 (see step_kwargs); False: diffusers' default
    min_steps: int = 1  # unCLIP's scheduler spaces its timesteps by (T - 1) / (steps - 1): at least 2
    prediction_types: tuple[str, ...] = ("epsilon", "v_prediction", "sample")  # what its step can convert
    # False: measured to give noise where the model's scheduler clips x0 to [-1, 1] on the cosine schedule (toy-unclip's
    # decoder: Euler, Euler ancestral and Heun start from sigma ~2e4 without clipping the denoised estimate); refused
    honours_clipping: bool = True

    def build(self, model_scheduler_config: Mapping[str, Any]) -> SchedulerMixin:
        """Build the scheduler from the model's own scheduler config plus this sampler's overrides.

        A model whose prediction type the scheduler's step cannot take (unCLIP's prior predicts the sample) is a
        ValueError here, where a sweep's preflight sees it, not at the first step."""
        model_scheduler_config = with_schedule_defaults(model_scheduler_config)
        prediction = model_scheduler_config.get("prediction_type", "epsilon")
        if prediction not in self.prediction_types:
            raise ValueError(
                f"{self.scheduler_class} takes prediction_type {' or '.join(self.prediction_types)}, not {prediction!r}"
            )
        if not self.honours_clipping and clips_x0_on_cosine(model_scheduler_config):
            raise ValueError(
                f"the model clips each x0 prediction to [-1, 1] (unCLIP's decoder and upsamplers), which "
                f"{self.scheduler_class} cannot honour: from the cosine schedule's first sigma (~2e4) its images are noise"
            )
        scheduler_class = getattr(diffusers, self.scheduler_class)
        model_scheduler_config = clipping_as_thresholding(model_scheduler_config, scheduler_class)
        scheduler = scheduler_class.from_config(dict(model_scheduler_config), **dict(self.overrides))
        scheduler.suite_clipped_eps = self.clipped_eps  # read by step_kwargs
        return scheduler


SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.register("ddpm", Sampler("DDPMScheduler", description="ancestral DDPM (Ho et al. 2020)"))
SAMPLERS.register("ddim", Sampler("DDIMScheduler", description="deterministic DDIM, eta=0 (Song et al. 2021)"))
SAMPLERS.register(
    "ddim-raw-eps",
    Sampler(
        "DDIMScheduler",
        description="DDIM as diffusers' pipelines run it: clipped x0 with the raw eps (collapses on thresholding models)",
        clipped_eps=False,
    ),
)
SAMPLERS.register(
    "pndm",
    Sampler(
        "PNDMScheduler",
        {"skip_prk_steps": True},
        "pseudo linear multistep (Liu et al. 2022)",
        prediction_types=("epsilon", "v_prediction"),
    ),
)
SAMPLERS.register(
    "euler",
    Sampler(
        "EulerDiscreteScheduler", description="Euler, Karras et al. 2022 Alg. 2 without churn", honours_clipping=False
    ),
)
SAMPLERS.register(
    "euler-ancestral",
    Sampler(
        "EulerAncestralDiscreteScheduler",
        description="Euler with ancestral noise (k-diffusion)",
        prediction_types=("epsilon", "v_prediction"),
        honours_clipping=False,
    ),
)
SAMPLERS.register(
    "heun",
    Sampler("HeunDiscreteScheduler", description="Heun 2nd order, Karras et al. 2022 Alg. 1", honours_clipping=False),
)
SAMPLERS.register(
    "dpm-solver++",
    Sampler(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
        "DPM-Solver++(2M) (Lu et al. 2022)",
    ),
)
SAMPLERS.register(
    "dpm-solver++-karras",
    Sampler(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM-Solver++(2M) on Karras sigmas",
    ),
)
SAMPLERS.register(
    "unipc", Sampler("UniPCMultistepScheduler", description="UniPC predictor-corrector (Zhao et al. 2023)")
)
SAMPLERS.register("deis", Sampler("DEISMultistepScheduler", description="DEIS multistep (Zhang & Chen 2023)"))
SAMPLERS.register(
    "unclip",
    Sampler(
        "UnCLIPScheduler",
        description="unCLIP's ancestral sampler (DALL-E 2 / Karlo): strided DDPM steps, cosine betas only",
        min_steps=2,
        prediction_types=("epsilon", "sample"),
    ),
)


def make_scheduler(sampler_name: str, model_scheduler_config: Mapping[str, Any]) -> SchedulerMixin:
    """Build the named sampler's scheduler from a model's scheduler config."""
    return SAMPLERS.get(sampler_name).build(model_scheduler_config)


def set_timesteps(scheduler: SchedulerMixin, num_inference_steps: int, strength: float = 1.0, device=None) -> int:
    """Lay out the sampling schedule; return the index of the first timestep to run.

    ``strength`` < 1 starts partway down (a truncated start, as diffusers' img2img pipelines do):
    the schedule is laid out for ``ceil(steps / strength)`` steps and its last ``steps`` are run,
    so the step count stays what was asked for.
    """
    total = math.ceil(num_inference_steps / strength - 1e-9)
    scheduler.set_timesteps(total, device=device)
    if len(scheduler.timesteps) and int(scheduler.timesteps.max()) >= scheduler.config.num_train_timesteps:
        # `leading` spacing with steps_offset=1 (Stable Diffusion's config) lays out t = 1000 for 1000 steps, past
        # the training range (diffusers' own pipelines fail there). Every training timestep is then run, 999..0:
        # that is what `trailing` spacing gives.
        scheduler.register_to_config(timestep_spacing="trailing")
        scheduler.set_timesteps(total, device=device)
    return (total - num_inference_steps) * getattr(scheduler, "order", 1)


def model_evaluations(
    sampler_name: str, num_inference_steps: int, model_scheduler_config: Mapping[str, Any], strength: float = 1.0
) -> int:
    """How many times the denoising loop calls the model: one per scheduler timestep it runs.

    Equal to the step count for first-order and multistep solvers; about twice that for Heun,
    one more for PNDM's warm-up.
    """
    scheduler = make_scheduler(sampler_name, model_scheduler_config)
    begin = set_timesteps(scheduler, num_inference_steps, strength, device="cpu")
    return len(scheduler.timesteps) - begin


def consumes_learned_variance(scheduler: SchedulerMixin) -> bool:
    """True when the scheduler uses a learned-variance half of the model output (IF's learned_range).

    ``from_config`` keeps foreign keys, so a DDIM built from IF's config still *says*
    ``variance_type: learned_range`` while its ``step`` cannot use it; ask the class instead.
    """
    accepts = "variance_type" in inspect.signature(type(scheduler).__init__).parameters
    return accepts and scheduler.config.get("variance_type") in LEARNED_VARIANCE_TYPES


def clips_x0(scheduler: SchedulerMixin) -> bool:
    """Whether the scheduler clips or dynamically thresholds its x0 prediction (IF's configs threshold)."""
    return bool(scheduler.config.get("thresholding") or scheduler.config.get("clip_sample"))


def takes_previous_timestep(scheduler: SchedulerMixin) -> bool:
    """Whether ``step`` must be told the next timestep (unCLIP's scheduler: it cannot infer a strided schedule)."""
    return "prev_timestep" in inspect.signature(scheduler.step).parameters


def step_kwargs(scheduler: SchedulerMixin, generators: list) -> dict[str, Any]:
    """Extra ``step`` arguments the scheduler accepts: per-image generators, eta=0, and a consistent DDIM update.

    DDIM clips (or dynamically thresholds) its x0 prediction but, by default, steps along the
    model's raw noise prediction: ``x_prev = sqrt(a_prev) * clip(x0) + sqrt(1 - a_prev) * eps``.
    Under classifier-free guidance that eps is far outside the clipped range, and the mismatch
    accumulates into saturated colour fields (the toy cascade's DDIM at guidance >= 3 loses every
    composition, while DDPM and DPM-Solver++, whose updates use only the clipped x0, do not). So
    eps is re-derived from the clipped x0, as GLIDE and Imagen do (``use_clipped_model_output``).
    Diffusers' pipelines leave it off; with no clipping the two are the same.
    """
    parameters = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in parameters:
        kwargs["generator"] = generators
    if "eta" in parameters:
        kwargs["eta"] = 0.0
    if (
        "use_clipped_model_output" in parameters
        and clips_x0(scheduler)
        and getattr(scheduler, "suite_clipped_eps", True)
    ):
        kwargs["use_clipped_model_output"] = True
    return kwargs
