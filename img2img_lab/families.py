"""Family adapters: what one diffusers img2img family means for sizes, call arguments and timestep preparation.

Each adapter wraps a pipeline and answers only what differs between families; the model handle
(:mod:`img2img_lab.models`) asks it. :data:`FAMILIES` maps a pipeline class name to its adapter; any other
pipeline gets :class:`Family` itself, the generic Stable Diffusion path.

========  =============================================  ======================  ==========================
family    retrieve_timesteps arguments                   then get_timesteps      size multiple
========  =============================================  ======================  ==========================
sd, sdxl  none                                           yes (``int(N*s)``)      VAE factor
sd3       ``mu`` from the token count (dynamic shift)    yes (``N*s``, no int)   VAE factor x patch size
flux      ``sigmas=linspace(1, 1/N, N)``, ``mu``         yes (``N*s``, no int)   VAE factor x 2 (packing)
lcm       ``strength`` (LCM shortens its own schedule)   no                      VAE factor
========  =============================================  ======================  ==========================

>>> from img2img_lab.tiny_families import make_tiny_family
>>> FAMILIES["FluxImg2ImgPipeline"](make_tiny_family("flux-schnell")).ignored_arguments()["guidance_scale"]
'this FLUX.1 transformer has no guidance embedding (schnell-style)'
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

#: Noise schedules: variance preserving (x_t = √ᾱ x0 + √(1-ᾱ) ε) and rectified flow (x_t = (1-σ) x0 + σ ε).
VP, FLOW = "vp", "flow"


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
    label = "unknown img2img pipeline (generic Stable Diffusion path)"
    schedule = VP
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
    name, label, schedule = "sd3", "Stable Diffusion 3 / 3.5", FLOW
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
    name, label, schedule = "flux", "FLUX.1", FLOW
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


#: diffusers pipeline class name -> family adapter.
FAMILIES: dict[str, type[Family]] = {
    "StableDiffusionImg2ImgPipeline": StableDiffusionFamily,
    "StableDiffusionXLImg2ImgPipeline": SDXLFamily,
    "StableDiffusion3Img2ImgPipeline": SD3Family,
    "FluxImg2ImgPipeline": FluxFamily,
    "LatentConsistencyModelImg2ImgPipeline": LCMFamily,
}
