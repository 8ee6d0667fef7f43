"""The noise schedules AUTOMATIC1111 and ComfyUI place their steps on, for a variance-preserving model.

Both tools sample with k-diffusion over the model's 1000 training sigmas ``σ_t = √((1-ᾱ_t)/ᾱ_t)`` (log-σ
interpolated between integer timesteps) and build an ``n``-step schedule (``n`` sigmas, high to low, then 0) by
name. Each function below is re-derived from the tools' code (read, cited, never copied):

* ``uniform`` — k-diffusion ``DiscreteSchedule.get_sigmas``: ``n`` timesteps evenly from 999 to 0 (A1111's
  "Automatic" for a sampler without a schedule of its own, e.g. Euler; A1111 ``modules/sd_samplers_kdiffusion.py``
  ``KDiffusionSampler.get_sigmas``);
* ``normal`` — ComfyUI ``comfy/samplers.py`` ``normal_scheduler`` and A1111 ``modules/sd_schedulers.py``
  ``normal_scheduler``: evenly in timestep from ``t(σ_max)`` to ``t(σ_min)`` (999 and 0), the same sigmas as
  ``uniform``;
* ``sgm_uniform`` — the same functions with ``sgm=True``: ``n + 1`` timesteps from 999 to 0, the last dropped;
* ``karras`` — k-diffusion ``get_sigmas_karras`` (ρ = 7) between the model's ``σ_min`` and ``σ_max``;
* ``exponential`` — k-diffusion ``get_sigmas_exponential``: evenly in ``log σ``;
* ``simple`` — ComfyUI ``simple_scheduler`` / A1111 ``simple_scheduler``: every ``1000/n``-th training sigma.

Commits read: Comfy-Org/ComfyUI@311c014 (``SCHEDULER_HANDLERS``, ``calculate_sigmas``), AUTOMATIC1111/stable-diffusion-
webui ``modules/sd_schedulers.py`` @02b0092 (``schedulers``: Automatic, Uniform, Karras, Exponential, SGM Uniform,
Simple, Normal…).

>>> table = DiscreteSigmas.from_config({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"})
>>> [round(sigma, 4) for sigma in table.schedule(3, "karras")]
[14.6146, 1.2741, 0.0292, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from img2img_lab.errors import PlanError

#: Schedule names this module builds (each tool offers a subset:
#: :data:`img2img_lab.strength.tool_rules.TOOL_SCHEDULES`).
SCHEDULES = ("uniform", "normal", "sgm_uniform", "karras", "exponential", "simple")
KARRAS_RHO = 7.0  # k-diffusion get_sigmas_karras' default, A1111's Scheduler('karras', default_rho=7.0)


@dataclass(frozen=True)
class DiscreteSigmas:
    """A variance-preserving model's training sigmas (k-diffusion's ``DiscreteSchedule``, ComfyUI's
    ``ModelSamplingDiscrete``), in float64."""

    sigmas: np.ndarray
    num_train_timesteps: int
    log_sigmas: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "log_sigmas", np.log(self.sigmas))

    @classmethod
    def from_config(cls, config: dict) -> "DiscreteSigmas":
        """From a diffusers scheduler config (``beta_start``, ``beta_end``, ``beta_schedule``)."""
        steps = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
        schedule = config.get("beta_schedule", "linear")
        if schedule == "scaled_linear":
            betas = np.linspace(start ** 0.5, end ** 0.5, steps, dtype=np.float64) ** 2
        elif schedule == "linear":
            betas = np.linspace(start, end, steps, dtype=np.float64)
        else:
            raise PlanError(f"beta_schedule {schedule!r} is not translated (scaled_linear and linear are). Fix: use "
                            f"a Stable Diffusion-style scheduler config.")
        alphas_cumprod = np.cumprod(1.0 - betas)
        return cls(np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod), steps)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma(self, t: float) -> float:
        """σ at a fractional timestep (linear in ``log σ`` between the integer ones)."""
        t = min(max(float(t), 0.0), len(self.sigmas) - 1.0)
        low, high = math.floor(t), math.ceil(t)
        weight = t - low
        return float(math.exp((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]))

    def schedule(self, steps: int, name: str = "normal") -> list[float]:
        """``steps`` sigmas of the named schedule (:data:`SCHEDULES`), high to low, then 0."""
        if name not in SCHEDULES:
            raise PlanError(f"unknown schedule {name!r}. Fix: use one of {', '.join(SCHEDULES)}.")
        if steps <= 0:
            return [0.0]
        top = len(self.sigmas) - 1
        if name in ("uniform", "normal"):
            return [self.sigma(t) for t in np.linspace(top, 0, steps)] + [0.0]
        if name == "sgm_uniform":
            return [self.sigma(t) for t in np.linspace(top, 0, steps + 1)[:-1]] + [0.0]
        if name == "karras":
            ramp = np.linspace(0, 1, steps)
            low, high = self.sigma_min ** (1 / KARRAS_RHO), self.sigma_max ** (1 / KARRAS_RHO)
            return [float((high + r * (low - high)) ** KARRAS_RHO) for r in ramp] + [0.0]
        if name == "exponential":
            return [float(math.exp(v)) for v in np.linspace(math.log(self.sigma_max), math.log(self.sigma_min),
                                                             steps)] + [0.0]
        stride = len(self.sigmas) / steps  # simple
        return [float(self.sigmas[-(1 + int(index * stride))]) for index in range(steps)] + [0.0]
