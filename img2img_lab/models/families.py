"""Family adapters: what one diffusers img2img or inpainting pipeline means for sizes, call arguments and timesteps.

diffusers' image-conditioned pipelines map the strength dial to denoising steps by one of a few **timestep rules**
(read from diffusers 0.42.1's source; ``../shared/DESIGN.md``). An adapter is chosen per pipeline class
(:mod:`img2img_lab.models.registry`) and answers only what differs: the arguments of the pipeline's
``retrieve_timesteps``, whether ``get_timesteps`` follows, the size multiple, the call's extra arguments and the
arguments the model ignores. The **noise formula** belongs to the scheduler class, not the pipeline
(:func:`schedule_of`): flow matching ``x_t = (1-σ) x0 + σ ε`` or variance preserving ``x_t = √ᾱ x0 + √(1-ᾱ) ε``.

========  =============================================  ======================  ==========================
rule      retrieve_timesteps arguments                   then get_timesteps      size multiple
========  =============================================  ======================  ==========================
sd        none                                           yes (``int(N*s)``)      VAE factor
sd3       ``mu`` from the token count (dynamic shift)    yes (``N*s``, no int)   VAE factor x patch size
flux      ``sigmas=linspace(1, 1/N, N)``, ``mu``         yes (``N*s``, no int)   VAE factor x 2 (packing)
z-image   float32 ``torch.linspace`` sigmas, ``mu``      yes (``N*s``, no int)   VAE factor x 2
lcm       ``strength`` (LCM shortens its own schedule)   no                      VAE factor
========  =============================================  ======================  ==========================

Chroma and QwenImage follow the flux rule; Chroma runs true classifier-free guidance through ``guidance_scale``,
QwenImage through ``true_cfg_scale`` (img2img-lab passes the cell's guidance there, with the negative prompt).

>>> from img2img_lab.testing.tiny_families import make_tiny_family
>>> FluxFamily(make_tiny_family("flux-schnell")).ignored_arguments()["guidance_scale"]
'this FLUX.1 transformer has no guidance embedding (schnell-style)'
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

#: Noise schedules: variance preserving (x_t = √ᾱ x0 + √(1-ᾱ) ε) and rectified flow (x_t = (1-σ) x0 + σ ε).
VP, FLOW = "vp", "flow"


#: Scheduler classes whose ``add_noise`` is variance preserving (they read ``alphas_cumprod``, or k-diffusion σ).
VP_SCHEDULERS = frozenset({
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "LCMScheduler", "TCDScheduler"})


def schedule_of(scheduler) -> str | None:
    """The noise formula of a scheduler, by its class: :data:`FLOW` (``FlowMatch*``), :data:`VP`, or ``None`` when
    img2img-lab does not know it (it then records no noise it cannot vouch for: the sweep is refused).

    >>> from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
    >>> schedule_of(DDIMScheduler()), schedule_of(FlowMatchEulerDiscreteScheduler())
    ('vp', 'flow')
    """
    name = type(scheduler).__name__
    if name.startswith("FlowMatch"):
        return FLOW
    return VP if name in VP_SCHEDULERS else None


def call_parameters(pipe) -> dict:
    """The parameters of the pipeline's ``__call__`` (what a family accepts, e.g. ``height``, ``negative_prompt``)."""
    return dict(inspect.signature(type(pipe).__call__).parameters)


class Family:
    """The generic adapter (Stable Diffusion rules); subclasses describe one diffusers family each.

    Subclasses override only what differs: the arguments of the pipeline's ``retrieve_timesteps``
    (:meth:`timestep_arguments`), whether ``__call__`` then applies ``get_timesteps`` (``applies_get_timesteps``),
    the noise schedule, the size rules and the arguments the model ignores.
    """

    name = "generic"
    label = "a pipeline img2img-lab has no adapter for (its own get_timesteps, checked)"
    applies_get_timesteps = True
    #: Scheduler names the family can run (``None``: every name in pipelines.SCHEDULERS).
    schedulers: tuple[str, ...] | None = None

    def __init__(self, pipe):
        self.pipe = pipe

    # ------------------------------------------------------------------ sizes
    def size_multiple(self) -> int:
        """Each image side must be a multiple of this (the VAE's downscale factor here)."""
        factor = getattr(self.pipe, "vae_scale_factor", None)
        if factor is None and getattr(self.pipe, "vae", None) is not None:
            factor = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        return int(factor or 8)

    def native_resolution(self) -> int | None:
        """The side the model was trained at: the denoiser's sample size (or the pipeline's default) × VAE factor."""
        denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
        sample = sample or getattr(self.pipe, "default_sample_size", None)
        if isinstance(sample, (list, tuple)):
            sample = max(sample)
        factor = getattr(self.pipe, "vae_scale_factor", None) or self.size_multiple()
        return int(sample) * int(factor) if sample else None

    def size_arguments(self, width: int, height: int) -> dict:
        """``height``/``width`` for pipelines whose ``__call__`` takes them (else they follow the image)."""
        parameters = call_parameters(self.pipe)
        return {"height": height, "width": width} if "height" in parameters and "width" in parameters else {}

    def call_extras(self, guidance_scale: float, negative_prompt: str) -> dict:
        """Arguments beyond image, prompt, strength, steps and generator: guidance and negative prompt as this
        pipeline takes them (here ``guidance_scale`` and, where ``__call__`` has one, ``negative_prompt``)."""
        extras = {"guidance_scale": guidance_scale}
        if "negative_prompt" in call_parameters(self.pipe):
            extras["negative_prompt"] = negative_prompt or None
        return extras

    def refuses_zero_steps(self) -> bool:
        """Whether ``__call__`` raises where no step is left (the inpainting pipelines' "number of pipeline steps is
        0 which is < 1"), even where a scheduler keeps a timestep (PNDM): such a strength is then zero-step."""
        import inspect as _inspect

        try:
            return "which is < 1" in _inspect.getsource(type(self.pipe).__call__)
        except (OSError, TypeError):
            return False

    # ------------------------------------------------------------------ inpainting
    def inpaint_method(self) -> str:
        """How this inpainting pipeline keeps the unmasked region: ``"latent blend"`` (the noised source's latents
        replace the denoised ones outside the mask after every step: 4-channel UNets, FLUX.1, SD3 with 16 channels)
        or ``"masked-image channels"`` (the denoiser takes the mask and the masked source as extra input channels:
        9-channel inpainting UNets)."""
        denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
        channels = getattr(getattr(denoiser, "config", None), "in_channels", None)
        latent = getattr(getattr(getattr(self.pipe, "vae", None), "config", None), "latent_channels", 4)
        if getattr(self.pipe, "unet", None) is not None or type(self).__name__ == "SD3Family":
            return "latent blend" if channels == latent else "masked-image channels"
        return "latent blend"

    # ------------------------------------------------------------------ what the model uses
    def default_guidance(self) -> float | None:
        """The guidance scale the pipeline's ``__call__`` defaults to."""
        default = call_parameters(self.pipe).get("guidance_scale")
        value = getattr(default, "default", None)
        return float(value) if isinstance(value, (int, float)) else None

    def guidance_used(self, guidance_scale: float) -> bool:
        """Whether this guidance value changes the output (classifier-free guidance runs only above 1)."""
        return guidance_scale > 1.0

    def ignored_arguments(self) -> dict[str, str]:
        """``{argument: why}`` for plan axes this model never uses."""
        if "negative_prompt" not in call_parameters(self.pipe):
            return {"negative_prompt": f"{type(self.pipe).__name__}.__call__ has no negative_prompt"}
        return {}

    # ------------------------------------------------------------------ timesteps
    def timestep_arguments(self, scheduler, num_inference_steps: int, strength: float, width: int,
                           height: int) -> dict:
        """Keyword arguments the pipeline passes to ``retrieve_timesteps`` besides the step count."""
        return {}

    def get_timesteps(self, scheduler, num_inference_steps: int, strength: float):
        """The pipeline's own ``get_timesteps`` run against ``scheduler``: ``(timesteps, executed_steps)``."""
        method = type(self.pipe).get_timesteps
        owner = SimpleNamespace(scheduler=scheduler, denoising_start=None)
        if "denoising_start" in inspect.signature(method).parameters:  # SDXL
            return method(owner, num_inference_steps, strength, "cpu", denoising_start=None)
        return method(owner, num_inference_steps, strength, "cpu")


# Adapted from diffusers.pipelines.flux.pipeline_flux.calculate_shift
def _calculate_shift(config, image_seq_len: int, default_max_shift: float) -> float:
    """The pipelines' ``calculate_shift``: ``mu`` linear in the number of image tokens."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", default_max_shift)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


class StableDiffusionFamily(Family):
    name, label = "sd", "Stable Diffusion 1.x / 2.x"


class SDXLFamily(Family):
    name, label = "sdxl", "Stable Diffusion XL (also Turbo)"


class SD3Family(Family):
    name, label = "sd3", "Stable Diffusion 3 / 3.5"
    schedulers = ("default",)

    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * int(self.pipe.transformer.config.patch_size)

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        if not scheduler.config.get("use_dynamic_shifting", None):
            return {}
        patch = self.pipe.transformer.config.patch_size
        tokens = (height // self.pipe.vae_scale_factor // patch) * (width // self.pipe.vae_scale_factor // patch)
        return {"mu": _calculate_shift(scheduler.config, tokens, 1.16)}


class FluxFamily(Family):
    name, label = "flux", "FLUX.1"
    schedulers = ("default",)

    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * 2  # latents are packed in 2x2 patches

    def guidance_used(self, guidance_scale: float) -> bool:
        return bool(self.pipe.transformer.config.guidance_embeds)  # dev: an embedding; schnell: ignored

    def ignored_arguments(self) -> dict[str, str]:
        ignored = {"negative_prompt": "FLUX.1 uses a negative prompt only with true_cfg_scale > 1, which "
                                      "img2img-lab does not sweep"}
        if not self.pipe.transformer.config.guidance_embeds:
            ignored["guidance_scale"] = "this FLUX.1 transformer has no guidance embedding (schnell-style)"
        return ignored

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        import numpy as np

        factor = self.pipe.vae_scale_factor
        tokens = (height // factor // 2) * (width // factor // 2)
        return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps),
                "mu": _calculate_shift(scheduler.config, tokens, 1.15)}


class TrueCFGFluxFamily(FluxFamily):
    """The FLUX.1 rule with true classifier-free guidance: guidance above 1 runs a negative branch, and the negative
    prompt is used wherever ``__call__`` takes one (FLUX.1 itself uses it only with ``true_cfg_scale``)."""

    def guidance_used(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def ignored_arguments(self) -> dict[str, str]:
        return Family.ignored_arguments(self)


class ChromaFamily(TrueCFGFluxFamily):
    """Chroma: the FLUX.1 rule; true classifier-free guidance through ``guidance_scale`` with a negative prompt."""

    name, label = "chroma", "Chroma"


class QwenImageFamily(TrueCFGFluxFamily):
    """QwenImage: the FLUX.1 rule on 16-px packed latents; true CFG through ``true_cfg_scale`` and a negative prompt
    (the cell's guidance goes there; an empty negative prompt is sent as ``" "``, as the pipeline's docs ask, so
    guidance above 1 always guides)."""

    name, label = "qwenimage", "Qwen-Image"

    def call_extras(self, guidance_scale: float, negative_prompt: str) -> dict:
        return {"true_cfg_scale": guidance_scale, "negative_prompt": negative_prompt or " "}


class ZImageFamily(TrueCFGFluxFamily):
    """Z-Image: float32 ``torch.linspace`` sigmas and ``mu`` always passed (``get_default_z_image_sigmas``)."""

    name, label = "z-image", "Z-Image"

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        import torch

        arguments = super().timestep_arguments(scheduler, num_inference_steps, strength, width, height)
        arguments["sigmas"] = torch.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()
        return arguments


class LCMFamily(Family):
    name, label = "lcm", "Latent Consistency Model"
    applies_get_timesteps = False
    schedulers = ("default", "lcm")

    def guidance_used(self, guidance_scale: float) -> bool:
        return getattr(self.pipe.unet.config, "time_cond_proj_dim", None) is not None

    def ignored_arguments(self) -> dict[str, str]:
        return {"negative_prompt": "LatentConsistencyModelImg2ImgPipeline swallows negative_prompt (**kwargs); "
                                   "LCM never runs classifier-free guidance"}

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        return {"strength": strength}
