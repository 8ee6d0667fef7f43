"""What a strength runs in other tools, re-derived from each tool's own source (read, cited, never copied).

Every tool starts an img2img run part-way down a noise schedule; they differ in which schedule and where:

* **AUTOMATIC1111 / Forge** (``modules/sd_samplers_common.py`` ``setup_img2img_steps``, lines 21-30 at
  AUTOMATIC1111/stable-diffusion-webui@044494d; ``modules/sd_samplers_kdiffusion.py`` ``sample_img2img``: ``sigma_sched =
  sigmas[steps - t_enc - 1:]``): by default the schedule has ``steps`` sigmas and ``t_enc = int(min(s, 0.999) * steps)``,
  so ``t_enc + 1`` steps run; with the option *"do exactly the amount of steps the slider specifies"*
  (``img2img_fix_steps``) the schedule has ``int(steps / min(s, 0.999))`` sigmas and the last ``steps`` run.
* **ComfyUI** ``KSampler`` ``denoise`` (``comfy/samplers.py`` ``KSampler.set_steps`` at Comfy-Org/ComfyUI@311c014):
  ``denoise > 0.9999`` runs the full schedule; otherwise it builds ``int(steps / denoise)`` sigmas and keeps the last
  ``steps + 1``: always ``steps`` steps, from a point of a longer schedule.
* **InvokeAI** (``invokeai/app/invocations/denoise_latents.py`` ``init_scheduler``): the diffusers scheduler's timesteps
  for ``steps``; with ``denoising_start = 1 - s`` it skips every timestep ``>= round(num_train_timesteps * s)`` and runs
  the rest.

The schedules are k-diffusion's discrete ones (both A1111 and ComfyUI): ``σ_t = √((1-ᾱ_t)/ᾱ_t)`` for the model's 1000
training timesteps, interpolated linearly in ``log σ`` between integer timesteps; ``normal`` (A1111's default,
ComfyUI's ``normal``) places the steps evenly in timestep from 999 to 0, ``karras`` evenly in ``σ^(1/7)``, ComfyUI's
``simple`` picks every ``1000/steps``-th training sigma. Flow-matching models run other code paths in these tools
(ComfyUI's ``ModelSamplingFlux``); they are not translated here.

>>> table = DiscreteSigmas.from_config({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"})
>>> run = comfyui_run(table, steps=30, denoise=0.6)
>>> run.executed_steps, round(run.start_sigma, 4)
(30, 2.2143)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from img2img_lab.errors import PlanError

#: The tools this module translates for (diffusers itself is :mod:`img2img_lab.strength.mapping`'s).
TOOLS = ("a1111", "a1111-fixed-steps", "comfyui", "invokeai")
SCHEDULES = ("normal", "karras", "simple")


@dataclass(frozen=True)
class ToolRun:
    """What one strength runs in one tool: the sigmas of the loop (start first, the final 0 included)."""

    tool: str
    strength: float
    steps: int
    executed_steps: int
    sigmas: tuple[float, ...] = field(default=())

    @property
    def start_sigma(self) -> float:
        """σ of the start latent (noise-to-signal ratio); 0 where nothing runs."""
        return float(self.sigmas[0]) if self.executed_steps else 0.0

    @property
    def log_snr(self) -> float:
        """``-2·log σ``: the family-independent noise axis (``+inf``: no noise)."""
        return -2.0 * math.log(self.start_sigma) if self.start_sigma > 0 else math.inf


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

    def sigma(self, t: float) -> float:
        """σ at a fractional timestep (linear in ``log σ`` between the integer ones)."""
        t = min(max(float(t), 0.0), len(self.sigmas) - 1.0)
        low, high = math.floor(t), math.ceil(t)
        weight = t - low
        return float(math.exp((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]))

    def schedule(self, steps: int, name: str = "normal") -> list[float]:
        """``steps`` sigmas, high to low, then 0 (``normal``, ``karras`` or ``simple``)."""
        if steps <= 0:
            return [0.0]
        if name == "normal":
            top = len(self.sigmas) - 1
            times = np.linspace(top, 0, steps) if steps > 1 else np.array([float(top)])
            return [self.sigma(t) for t in times] + [0.0]
        if name == "karras":
            low, high = float(self.sigmas[0]) ** (1 / 7), float(self.sigmas[-1]) ** (1 / 7)
            ramp = np.linspace(0, 1, steps)
            return [float((high + r * (low - high)) ** 7) for r in ramp] + [0.0]
        if name == "simple":
            stride = len(self.sigmas) / steps
            return [float(self.sigmas[-(1 + int(index * stride))]) for index in range(steps)] + [0.0]
        raise PlanError(f"unknown schedule {name!r}. Fix: use one of {', '.join(SCHEDULES)}.")


def a1111_run(table: DiscreteSigmas, *, steps: int, strength: float, fixed_steps: bool = False,
              schedule: str = "normal") -> ToolRun:
    """AUTOMATIC1111 / Forge img2img (see the module doc).

    >>> table = DiscreteSigmas.from_config({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"})
    >>> a1111_run(table, steps=30, strength=0.6).executed_steps, a1111_run(table, steps=30, strength=0.6,
    ...                                                                    fixed_steps=True).executed_steps
    (19, 30)
    """
    if fixed_steps:
        total = int(steps / min(strength, 0.999)) if strength > 0 else 0
        t_enc = steps - 1
    else:
        total, t_enc = steps, int(min(strength, 0.999) * steps)
    if strength <= 0 or total <= 0:
        return ToolRun("a1111-fixed-steps" if fixed_steps else "a1111", strength, steps, 0, ())
    sigmas = table.schedule(total, schedule)[total - t_enc - 1:]
    return ToolRun("a1111-fixed-steps" if fixed_steps else "a1111", strength, steps, len(sigmas) - 1, tuple(sigmas))


def comfyui_run(table: DiscreteSigmas, *, steps: int, denoise: float, schedule: str = "normal") -> ToolRun:
    """ComfyUI ``KSampler`` with ``denoise`` (see the module doc)."""
    if denoise > 0.9999:
        sigmas = table.schedule(steps, schedule)
    elif denoise <= 0.0:
        sigmas = []
    else:
        sigmas = table.schedule(int(steps / denoise), schedule)[-(steps + 1):]
    return ToolRun("comfyui", denoise, steps, max(len(sigmas) - 1, 0), tuple(sigmas))


def invokeai_run(scheduler, table: DiscreteSigmas, *, steps: int, strength: float) -> ToolRun:
    """InvokeAI's denoise step on a diffusers ``scheduler`` (a fresh instance; see the module doc); the sigmas are the
    model's at the timesteps it runs."""
    scheduler.set_timesteps(steps)
    timesteps = [float(t) for t in scheduler.timesteps]
    first_order = timesteps[:: scheduler.order]
    start_value = int(round(table.num_train_timesteps * strength))  # denoising_start = 1 - strength
    skipped = sum(1 for t in first_order if t >= start_value) * scheduler.order
    kept = timesteps[skipped:]
    sigmas = tuple(table.sigma(t) for t in kept) + ((0.0,) if kept else ())
    return ToolRun("invokeai", strength, steps, len(kept) // scheduler.order, sigmas)
