"""What a strength runs in other tools, re-derived from each tool's own source (read, cited, never copied).

Every tool starts an img2img run part-way down a noise schedule; they differ in which schedule and where:

* **AUTOMATIC1111 / Forge** (AUTOMATIC1111/stable-diffusion-webui v1.10.1): ``modules/sd_samplers_common.py``
  ``setup_img2img_steps`` gives ``t_enc = int(min(s, 0.999) · steps)`` on a ``steps``-sigma schedule, or with
  *"do exactly the amount of steps the slider specifies"* (``img2img_fix_steps``) ``int(steps / min(s, 0.999))``
  sigmas (0 at strength 0) and ``t_enc = steps - 1``; ``modules/sd_samplers_kdiffusion.py`` ``sample_img2img`` keeps
  ``sigmas[steps - t_enc - 1:]`` and runs ``t_enc + 1`` steps, so **strength 0 runs one step** (nothing in the img2img
  path skips it). The schedule is the sampler's and the *schedule type*'s (``get_sigmas``: "Automatic" takes the
  sampler's own, :data:`A1111_SAMPLERS`; a sampler without one gets k-diffusion's uniform ``get_sigmas``; samplers
  that discard the penultimate sigma build one more and drop it). The UI's default since 1.9 is **DPM++ 2M,
  Automatic → Karras**; the API's default sampler is Euler (uniform).
* **ComfyUI** ``KSampler`` ``denoise`` (Comfy-Org/ComfyUI@311c014, ``comfy/samplers.py`` ``KSampler.set_steps``):
  ``denoise > 0.9999`` runs the full schedule; ``denoise <= 0`` none; otherwise it builds ``int(steps / denoise)``
  sigmas of the node's ``scheduler`` and keeps the last ``steps + 1``: always ``steps`` steps. The node's default is
  the first of ``SCHEDULER_NAMES``: **simple**.
* **InvokeAI** (invoke-ai/InvokeAI@8e71a8a, 6.14): ``invokeai/app/invocations/denoise_latents.py`` ``get_scheduler``
  (lines 87-129) never uses the checkpoint's scheduler class: it builds ``SCHEDULER_MAP[name]``
  (``invokeai/backend/stable_diffusion/schedulers/schedulers.py`` line 62) from the model's scheduler config plus the
  entry's options; the node's default is ``euler`` (line 165), the UI's ``dpmpp_3m_k``
  (``frontend/web/src/features/controlLayers/store/types.ts`` line 989). ``init_scheduler`` (lines 749-803; the
  start at 769-770) skips every first-order timestep ``>= int(round(1000 · (1 - denoising_start)))``; the UI sends
  ``denoising_start = 1 - strength`` (``graphBuilderUtils.ts`` ``getDenoisingStartAndEnd``, line 274), computed in
  doubles: at strength 0.3515 that is ``round(351.4999…) = 351``.

Flow-matching models run other code paths in these tools (ComfyUI's ``ModelSamplingFlux``); they are not translated.

>>> table = DiscreteSigmas.from_config({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"})
>>> run = comfyui_run(table, steps=30, denoise=0.6, scheduler="normal")
>>> run.executed_steps, round(run.start_sigma, 4), run.schedule
(30, 2.2143, 'normal')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from img2img_lab.errors import PlanError
from img2img_lab.strength.schedules import SCHEDULES, DiscreteSigmas

__all__ = ["A1111_SAMPLERS", "DEFAULTS", "check_tool_settings", "INVOKEAI_SCHEDULERS", "TOOL_SCHEDULES", "DiscreteSigmas", "ToolRun",
           "a1111_run", "comfyui_run", "invokeai_run", "SCHEDULES"]

#: AUTOMATIC1111's k-diffusion samplers (``samplers_k_diffusion`` in ``modules/sd_samplers_kdiffusion.py``, v1.10;
#: Forge keeps the same table): the schedule "Automatic" picks (None: k-diffusion's uniform ``get_sigmas``) and
#: whether the sampler discards the penultimate sigma.
A1111_SAMPLERS = {
    "DPM++ 2M": ("karras", False), "DPM++ SDE": ("karras", False), "DPM++ 2M SDE": ("exponential", False),
    "DPM++ 2M SDE Heun": ("exponential", False), "DPM++ 2S a": ("karras", False), "DPM++ 3M SDE": ("exponential", True),
    "Euler a": (None, False), "Euler": (None, False),
}
#: The schedule types each tool offers here ("automatic": A1111's sampler default).
TOOL_SCHEDULES = {"a1111": ("automatic", "uniform", "normal", "karras", "exponential", "sgm_uniform", "simple"),
                  "comfyui": ("simple", "sgm_uniform", "karras", "exponential", "normal")}
#: InvokeAI's ``SCHEDULER_MAP`` (schedulers.py lines 62-104) for the diffusers schedulers of a variance-preserving
#: model: name -> (diffusers class, options over the model's scheduler config). Omitted: ``er_sde`` (InvokeAI's own
#: class), ``lcm`` and ``tcd`` (distilled models).
INVOKEAI_SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}), "ddpm": ("DDPMScheduler", {}),
    "deis": ("DEISMultistepScheduler", {"use_karras_sigmas": False}),
    "deis_k": ("DEISMultistepScheduler", {"use_karras_sigmas": True}),
    "lms": ("LMSDiscreteScheduler", {"use_karras_sigmas": False}),
    "lms_k": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}), "pndm": ("PNDMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": False}),
    "heun_k": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "euler_k": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "kdpm_2": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": False}),
    "kdpm_2_k": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "kdpm_2_a": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": False}),
    "kdpm_2_a_k": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2s": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": False, "solver_order": 2}),
    "dpmpp_2s_k": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True, "solver_order": 2}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False, "solver_order": 2}),
    "dpmpp_2m_k": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler",
                     {"use_karras_sigmas": False, "solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_2m_sde_k": ("DPMSolverMultistepScheduler",
                       {"use_karras_sigmas": True, "solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False, "solver_order": 3}),
    "dpmpp_3m_k": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "solver_order": 3}),
    "unipc": ("UniPCMultistepScheduler", {"use_karras_sigmas": False}),
    "unipc_k": ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
}
#: Each tool's default, as its user meets it: A1111's UI (DPM++ 2M, Automatic), ComfyUI's KSampler node (its first
#: scheduler name) and InvokeAI's UI (``dpmpp_3m_k``; the node alone defaults to ``euler``).
DEFAULTS = {"a1111": {"sampler": "DPM++ 2M", "schedule": "automatic"}, "comfyui": {"scheduler": "simple"},
            "invokeai": {"scheduler": "dpmpp_3m_k"}}


@dataclass(frozen=True)
class ToolRun:
    """What one strength runs in one tool: the sigmas of the loop (start first, the final 0 included), the schedule
    they follow and, where the count misleads, a note."""

    tool: str
    strength: float
    steps: int
    executed_steps: int
    sigmas: tuple[float, ...] = field(default=())
    schedule: str = ""
    note: str = ""

    @property
    def start_sigma(self) -> float:
        """σ of the start latent (noise-to-signal ratio); 0 where no noise is added."""
        return float(self.sigmas[0]) if self.sigmas else 0.0

    @property
    def log_snr(self) -> float:
        """``-2·log σ``: the family-independent noise axis (``+inf``: no noise)."""
        return -2.0 * math.log(self.start_sigma) if self.start_sigma > 0 else math.inf


def _known(what: str, name: str, names) -> None:
    """Refuse a name the tool does not offer, naming the ones it does."""
    if name not in names:
        raise PlanError(f"unknown {what} {name!r}. Fix: use one of {', '.join(names)}.")


def check_tool_settings(settings: dict) -> None:
    """Refuse any name in ``{"a1111": {"sampler", "schedule"}, "comfyui": {"scheduler"}, "invokeai": {"scheduler"}}``
    the tool does not offer.

    >>> check_tool_settings({**DEFAULTS, "comfyui": {"scheduler": "beta"}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    img2img_lab.errors.PlanError: unknown ComfyUI scheduler 'beta'. Fix: use one of simple, ...
    """
    a1111_schedule(settings["a1111"]["sampler"], settings["a1111"]["schedule"])
    _known("ComfyUI scheduler", settings["comfyui"]["scheduler"], TOOL_SCHEDULES["comfyui"])
    _known("InvokeAI scheduler", settings["invokeai"]["scheduler"], INVOKEAI_SCHEDULERS)


def a1111_schedule(sampler: str, schedule: str) -> tuple[str, bool]:
    """``(schedule, discards penultimate sigma)`` for an A1111 sampler and schedule type ("automatic": the sampler's).

    >>> a1111_schedule("DPM++ 2M", "automatic"), a1111_schedule("Euler", "automatic")
    (('karras', False), ('uniform', False))
    """
    _known("AUTOMATIC1111 sampler", sampler, A1111_SAMPLERS)
    _known("AUTOMATIC1111 schedule type", schedule, TOOL_SCHEDULES["a1111"])
    own, discard = A1111_SAMPLERS[sampler]
    return (own or "uniform") if schedule == "automatic" else schedule, discard


def a1111_run(table: DiscreteSigmas, *, steps: int, strength: float, fixed_steps: bool = False,
              sampler: str = "DPM++ 2M", schedule: str = "automatic") -> ToolRun:
    """AUTOMATIC1111 / Forge img2img (see the module doc).

    >>> table = DiscreteSigmas.from_config({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"})
    >>> run = a1111_run(table, steps=30, strength=0.6)
    >>> run.executed_steps, round(run.start_sigma, 3), run.schedule
    (19, 2.493, 'DPM++ 2M, karras')
    >>> a1111_run(table, steps=30, strength=0.0, sampler="Euler").executed_steps  # t_enc = 0: one step
    1
    """
    name, discard = a1111_schedule(sampler, schedule)
    tool = "a1111-fixed-steps" if fixed_steps else "a1111"
    if fixed_steps:
        total = int(steps / min(strength, 0.999)) if strength > 0 else 0
        t_enc = steps - 1
    else:
        total, t_enc = steps, int(min(strength, 0.999) * steps)
    sigmas = table.schedule(total + (1 if discard else 0), name)
    if discard:
        sigmas = sigmas[:-2] + sigmas[-1:]
    kept = sigmas[total - t_enc - 1:]  # fixed steps at strength 0: total 0, a negative start keeps the lone 0
    executed = len(kept) - 1
    return ToolRun(tool, strength, steps, executed, tuple(kept) if executed else (), f"{sampler}, {name}")


def comfyui_run(table: DiscreteSigmas, *, steps: int, denoise: float, scheduler: str = "simple") -> ToolRun:
    """ComfyUI ``KSampler`` with ``denoise`` and the node's ``scheduler`` (see the module doc)."""
    _known("ComfyUI scheduler", scheduler, TOOL_SCHEDULES["comfyui"])
    if denoise > 0.9999:
        sigmas = table.schedule(steps, scheduler)
    elif denoise <= 0.0:
        sigmas = []
    else:
        sigmas = table.schedule(int(steps / denoise), scheduler)[-(steps + 1):]
    return ToolRun("comfyui", denoise, steps, max(len(sigmas) - 1, 0), tuple(sigmas), scheduler)


def invokeai_scheduler(config: dict, name: str):
    """InvokeAI's scheduler ``name`` built as ``get_scheduler`` builds it: ``SCHEDULER_MAP[name]``'s class from the
    model's config with the entry's options over it."""
    import diffusers
    from diffusers.utils import logging

    _known("InvokeAI scheduler", name, INVOKEAI_SCHEDULERS)
    class_name, options = INVOKEAI_SCHEDULERS[name]
    level = logging.get_verbosity()
    logging.set_verbosity_error()  # a config note diffusers prints while adapting the options, not the user's concern
    try:
        return getattr(diffusers, class_name).from_config({**config, **options})
    finally:
        logging.set_verbosity(level)


def invokeai_run(config: dict, table: DiscreteSigmas, *, steps: int, strength: float,
                 scheduler: str = "dpmpp_3m_k") -> ToolRun:
    """InvokeAI's denoise node at ``denoising_start = 1 - strength`` (see the module doc). The start σ is the one the
    scheduler's ``add_noise`` uses: its own ``sigmas`` at the start index, else ``√((1-ᾱ_t)/ᾱ_t)`` at the start
    timestep."""
    instance = invokeai_scheduler(config, scheduler)
    instance.set_timesteps(steps)
    timesteps = [float(t) for t in instance.timesteps]
    start_value = int(round(instance.config["num_train_timesteps"] * (1 - (1 - strength))))
    skipped = sum(1 for t in timesteps[:: instance.order] if t >= start_value) * instance.order
    kept = timesteps[skipped:]
    if not kept:
        return ToolRun("invokeai", strength, steps, 0, (), scheduler)
    own = getattr(instance, "sigmas", None)
    if own is not None and len(own) > len(timesteps) - 1:
        sigmas = tuple(float(value) for value in own[skipped:])
    else:
        alphas_cumprod = instance.alphas_cumprod.double()
        sigmas = tuple(float(((1 - alphas_cumprod[int(t)]) / alphas_cumprod[int(t)]) ** 0.5) for t in kept) + (0.0,)
    return ToolRun("invokeai", strength, steps, len(kept) // instance.order, sigmas, scheduler)
