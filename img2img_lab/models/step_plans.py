"""What one strength runs: :class:`StepPlan` (steps, timesteps and the start latent's noise), made by running the
pipeline's own timestep preparation on a copy of the scheduler (:func:`compute_step_plan`, which
:meth:`img2img_lab.models.handle.ModelHandle.step_plan` caches), and how the noise of the start latent is read from
the scheduler (:func:`noise_at_start`).

>>> zero_step_plan(20, 0.0).zero_step
True
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from img2img_lab.errors import PlanError
from img2img_lab.models.families.base import FLOW, VP, schedule_of


@dataclass(frozen=True)
class StepPlan:
    """What one strength runs on one model, scheduler, step count and image size.

    ``executed_steps`` is the number of denoising steps the pipeline runs (0: none — img2img-lab then stores
    the VAE round trip), ``t_start`` the index on the scheduler's grid where it starts, ``timesteps`` every
    timestep the denoiser is called at (a 2nd-order scheduler repeats some). The start latent's noise:

    * ``sigma``: noise-to-signal ratio of the start latent, the same quantity in both schedules (VP:
      ``√((1-ᾱ)/ᾱ)``, k-diffusion's σ; flow: ``σ_t / (1-σ_t)``); 0 for zero-step cells;
    * ``log_snr``: ``log(signal² / noise²) = -2·log(sigma)`` (VP: ``log(ᾱ/(1-ᾱ))``; flow:
      ``2·log((1-σ_t)/σ_t)``), the family-independent noise axis; ``+inf`` without noise, ``-inf`` from pure noise;
    * ``sqrt_alpha_bar``: VP only (the share of the source signal kept), else NaN;
    * ``flow_sigma``: flow only (σ_t, the noise weight of ``x_t = (1-σ_t) x0 + σ_t ε``), else NaN.
    """

    num_inference_steps: int
    strength: float
    executed_steps: int
    t_start: int
    timesteps: tuple[float, ...]
    schedule: str = VP
    start_timestep: float | None = None
    sigma: float = 0.0
    log_snr: float = math.inf
    sqrt_alpha_bar: float = 1.0
    flow_sigma: float = math.nan

    @property
    def zero_step(self) -> bool:
        """No denoiser call runs (PNDM still calls it once where the pipeline counts 0 steps)."""
        return not self.timesteps

    @property
    def denoiser_evaluations(self) -> int:
        """Denoiser calls per image and guidance branch (``len(timesteps)``)."""
        return len(self.timesteps)

    @property
    def run_signature(self) -> tuple:
        """Two strengths with equal signatures run the same denoising, hence give the same image."""
        return (self.t_start, self.timesteps)

    def timesteps_text(self) -> str:
        """The timesteps as a compact comma-separated string (what the table stores)."""
        return ",".join(f"{value:.6g}" for value in self.timesteps)


def zero_step_plan(num_inference_steps: int, strength: float, schedule: str = VP) -> StepPlan:
    """The plan of a strength that runs no denoising step (the output is the source's VAE round trip)."""
    flow = schedule == FLOW
    return StepPlan(num_inference_steps, strength, 0, num_inference_steps, (), schedule,
                    sqrt_alpha_bar=math.nan if flow else 1.0, flow_sigma=0.0 if flow else math.nan)


def noise_at_start(scheduler, timesteps, begin_index: int, schedule: str) -> dict:
    """The start latent's noise (see :class:`StepPlan`) as the pipeline's ``add_noise``/``scale_noise`` makes it.

    >>> from diffusers import DDIMScheduler
    >>> s = DDIMScheduler(); s.set_timesteps(20)
    >>> round(noise_at_start(s, s.timesteps[10:], 10, VP)["sqrt_alpha_bar"], 3)
    0.355
    """
    start = float(timesteps[0])
    sigmas = getattr(scheduler, "sigmas", None)
    if schedule == FLOW:
        flow_sigma = float(sigmas[begin_index])
        sigma = flow_sigma / (1.0 - flow_sigma) if flow_sigma < 1.0 else math.inf
        return {"start_timestep": start, "flow_sigma": flow_sigma, "sigma": sigma,
                "log_snr": -2.0 * math.log(sigma) if 0 < sigma < math.inf else (-math.inf if sigma else math.inf),
                "sqrt_alpha_bar": math.nan}
    if sigmas is not None and len(sigmas) > begin_index:  # k-diffusion style schedulers keep σ per step
        sigma = float(sigmas[begin_index])
        alpha_bar = 1.0 / (1.0 + sigma**2)
    else:  # DDIM, PNDM, DDPM, LCM: add_noise reads alphas_cumprod at the timestep
        alpha_bar = float(scheduler.alphas_cumprod[int(round(start))])
        sigma = math.sqrt((1.0 - alpha_bar) / alpha_bar)
    return {"start_timestep": start, "sigma": sigma, "sqrt_alpha_bar": math.sqrt(alpha_bar),
            "log_snr": math.log(alpha_bar / (1.0 - alpha_bar)) if alpha_bar < 1.0 else math.inf,
            "flow_sigma": math.nan}


def _retrieve_timesteps(pipe):
    """The pipeline module's own ``retrieve_timesteps`` (each diffusers pipeline module carries a copy)."""
    own = getattr(sys.modules.get(type(pipe).__module__), "retrieve_timesteps", None)
    if own is not None:
        return own
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_timesteps

    return retrieve_timesteps


def compute_step_plan(family, base_scheduler, steps: int, strength: float, width: int, height: int, *,
                      inpaints: bool) -> StepPlan:
    """What ``strength`` runs on the family's pipeline: its ``retrieve_timesteps`` with the family's arguments, then
    its ``get_timesteps``, on a fresh copy of ``base_scheduler``.

    Where no timestep is left (strength 0 on most schedulers; PNDM keeps one) the plan is zero-step. A strength the
    family cannot run (LCM below ``num_inference_steps / original_inference_steps``; strength 0 there is zero-step)
    raises :class:`PlanError` naming the fix. An inpainting pipeline at strength 1 starts from pure noise.

    >>> compute_step_plan(model.family, model.scheduler("default"), 10, 0.5, 64, 64, inpaints=False).executed_steps
    5
    """
    scheduler = type(base_scheduler).from_config(base_scheduler.config)
    schedule = schedule_of(scheduler)
    if schedule is None:
        raise PlanError(f"scheduler {type(scheduler).__name__} has a noise formula img2img-lab does not know. "
                        f"Fix: use a scheduler by name (ddim, euler, dpmpp_2m...).")
    try:
        arguments = family.timestep_arguments(scheduler, steps, strength, width, height)
        timesteps, executed = _retrieve_timesteps(family.pipe)(scheduler, steps, "cpu", **arguments)
        if family.applies_get_timesteps and hasattr(type(family.pipe), "get_timesteps"):
            timesteps, executed = family.get_timesteps(scheduler, executed, strength)
    except ValueError as error:
        if strength == 0:  # e.g. LCM: no schedule at all; strength 0 means "keep the source"
            return zero_step_plan(steps, strength, schedule)
        raise PlanError(f"strength {strength:g} with {steps} steps cannot run on {family.label}: {error} "
                        f"Fix: choose a higher strength or fewer steps.") from None
    if len(timesteps) == 0 or (int(executed) < 1 and family.refuses_zero_steps()):
        return zero_step_plan(steps, strength, schedule)
    t_start = steps - int(executed) if family.applies_get_timesteps else 0
    begin = getattr(scheduler, "begin_index", None)
    begin = t_start * scheduler.order if begin is None else begin
    noise = noise_at_start(scheduler, timesteps, begin, schedule)
    if inpaints and strength == 1.0:  # diffusers' is_strength_max: the start latent is pure noise
        noise = {**noise, "sigma": math.inf, "log_snr": -math.inf,
                 "sqrt_alpha_bar": math.nan if schedule == FLOW else 0.0,
                 "flow_sigma": 1.0 if schedule == FLOW else math.nan}
    return StepPlan(steps, strength, int(executed), t_start, tuple(float(t) for t in timesteps), schedule, **noise)
