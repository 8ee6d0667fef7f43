"""Schedulers by name: the table every plan, CLI option and widget uses, and how one is built from a model's config.

A leaf module (it imports diffusers only when a scheduler is built), so plans can check names without a model.

>>> scheduler_names()[:3]
['default', 'ddim', 'ddpm']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from img2img_lab.errors import ModelError


@dataclass(frozen=True)
class SchedulerSpec:
    """A scheduler by name: a diffusers class plus config overrides."""

    class_name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    description: str = ""


#: Scheduler names accepted everywhere (plans, CLI, widgets). ``default`` keeps the model's own.
SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler", description="DDIM, deterministic (eta=0)"),
    "ddpm": SchedulerSpec("DDPMScheduler", description="DDPM, ancestral"),
    "pndm": SchedulerSpec("PNDMScheduler", (("skip_prk_steps", True),), "PNDM / PLMS (Stable Diffusion 1.x default)"),
    "euler": SchedulerSpec("EulerDiscreteScheduler", description="Euler (k-diffusion)"),
    "euler_a": SchedulerSpec("EulerAncestralDiscreteScheduler", description="Euler ancestral"),
    "heun": SchedulerSpec("HeunDiscreteScheduler", description="Heun, 2 UNet calls per step"),
    "lms": SchedulerSpec("LMSDiscreteScheduler", description="linear multistep (needs scipy)"),
    "dpmpp_2m": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", False)),
        "DPM++ 2M",
    ),
    "dpmpp_2m_karras": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", True)),
        "DPM++ 2M with Karras sigmas",
    ),
    "dpmpp_sde": SchedulerSpec("DPMSolverSinglestepScheduler", description="DPM++ singlestep"),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", description="UniPC multistep"),
    "deis": SchedulerSpec("DEISMultistepScheduler", description="DEIS multistep"),
    "lcm": SchedulerSpec("LCMScheduler", description="LCM (for LCM-distilled models)"),
}


def scheduler_names() -> list[str]:
    """All scheduler names :func:`make_scheduler` accepts, ``"default"`` first.

    >>> "euler_a" in scheduler_names()
    True
    """
    return ["default", *SCHEDULERS]


def make_scheduler(base_config: Any, name: str | None):
    """Build a scheduler by name from a pipeline's scheduler config.

    ``None`` or ``"default"`` rebuilds the pipeline's own scheduler class from ``base_config``.

    >>> from diffusers import DDIMScheduler
    >>> type(make_scheduler(DDIMScheduler().config, "euler")).__name__
    'EulerDiscreteScheduler'
    """
    import diffusers

    config = dict(base_config)
    if name in (None, "default"):
        class_name = config.get("_class_name")
        if class_name is None or not hasattr(diffusers, class_name):
            raise ModelError(f"cannot rebuild the model's default scheduler {class_name!r}.")
        return getattr(diffusers, class_name).from_config(config)
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ModelError(
            f"unknown scheduler {name!r}. Fix: use one of {', '.join(scheduler_names())}."
        )
    spec = SCHEDULERS[key]
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(config, **dict(spec.overrides))
