"""What every family module declares, and the rules they share.

A family is one module of :mod:`img2img_lab.models.families` holding one subclass of :class:`Family`. The class
*declares*, as data, which diffusers classes it runs by task (:data:`TASKS`), which ones it refuses and why, which
text-to-image class a model folder may name instead, its bundled scheduler configs and its tiny random pipelines
(:attr:`Family.tiny_pipelines`); an instance wraps one loaded pipeline and *answers*, as methods, what that family
means for sizes, call arguments, timesteps, the VAE round trip and the batched engine. Subclasses override only
what differs from Stable Diffusion's rules here.

The **noise formula** belongs to the scheduler class, not the pipeline (:func:`schedule_of`): flow matching
``x_t = (1-σ) x0 + σ ε`` or variance preserving ``x_t = √ᾱ x0 + √(1-ᾱ) ε``.

>>> from diffusers import DDIMScheduler
>>> schedule_of(DDIMScheduler()), Family.task_of("StableDiffusionImg2ImgPipeline")
('vp', None)
"""

from __future__ import annotations

import functools
import inspect
from types import SimpleNamespace
from typing import Callable, ClassVar

#: Noise schedules: variance preserving (x_t = √ᾱ x0 + √(1-ᾱ) ε) and rectified flow (x_t = (1-σ) x0 + σ ε).
VP, FLOW = "vp", "flow"

#: The tasks a family declares its classes under.
TASKS = ("img2img", "inpaint", "controlnet-img2img", "controlnet-inpaint")

#: Scheduler classes whose ``add_noise`` is variance preserving (they read ``alphas_cumprod``, or k-diffusion σ).
VP_SCHEDULERS = frozenset({
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "LCMScheduler", "TCDScheduler"})


def schedule_of(scheduler) -> str | None:
    """The noise formula of a scheduler, by its class: :data:`FLOW` (``FlowMatch*``), :data:`VP`, or ``None`` when
    img2img-lab does not know it (it then records no noise it cannot vouch for: the sweep is refused).

    >>> from diffusers import FlowMatchEulerDiscreteScheduler
    >>> schedule_of(FlowMatchEulerDiscreteScheduler())
    'flow'
    """
    name = type(scheduler).__name__
    if name.startswith("FlowMatch"):
        return FLOW
    return VP if name in VP_SCHEDULERS else None


def call_parameters(pipe) -> dict:
    """The parameters of the pipeline's ``__call__`` (what a family accepts, e.g. ``height``, ``negative_prompt``).

    >>> "strength" in call_parameters(pipe)
    True
    """
    return dict(_call_signature(type(pipe)).parameters)


@functools.lru_cache(maxsize=None)
def _call_signature(pipeline_class) -> inspect.Signature:
    """A pipeline class's ``__call__`` signature, read once per class (``inspect.signature`` takes ~0.1 ms)."""
    return inspect.signature(pipeline_class.__call__)


# Adapted from diffusers.pipelines.flux.pipeline_flux.calculate_shift
def calculate_shift(config, image_seq_len: int, default_max_shift: float) -> float:
    """The pipelines' ``calculate_shift``: ``mu`` linear in the number of image tokens.

    >>> calculate_shift({}, 256, 1.15), round(calculate_shift({}, 4096, 1.15), 6)
    (0.5, 1.15)
    """
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", default_max_shift)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


# Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.retrieve_latents
def sample_latent(distribution, generator):
    """Exactly ``retrieve_latents(encoder_output, generator)``: mean + std * randn(generator)."""
    from diffusers.utils.torch_utils import randn_tensor

    sample = randn_tensor(distribution.mean.shape, generator=generator, device=distribution.parameters.device,
                          dtype=distribution.parameters.dtype)
    return distribution.mean + distribution.std * sample


def masked_source(pipe, source, mask_image, size):
    """``(mask, masked pixels)`` as an inpainting pipeline's ``__call__`` prepares them at ``size``: the mask
    preprocessed (white is repainted) and the source's pixels where it keeps them (``init_image * (mask < 0.5)``).

    >>> from PIL import Image
    >>> repaint_all = Image.new("L", source.size, 255)
    >>> condition, masked = masked_source(model.for_mode("inpaint").pipe, source, repaint_all, source.size)
    >>> float(condition.min()), float(masked.abs().max())
    (1.0, 0.0)
    """
    import torch

    width, height = size
    pixels = pipe.image_processor.preprocess(source, height=height, width=width).to(dtype=torch.float32)
    condition = pipe.mask_processor.preprocess(mask_image, height=height, width=width)
    return condition, pixels * (condition < 0.5)


class Family:
    """The generic family (Stable Diffusion's rules); each family module subclasses it once.

    Declared (class attributes, read without a pipeline): ``pipelines`` (task → the diffusers classes this family
    runs), ``text_to_image`` (a class a model folder may name → the class it is swept as), ``no_strength`` (class →
    what it does instead of a strength dial), ``refused`` (class → why its strength cannot be recorded truthfully),
    ``scheduler_configs`` (bundled ``data/schedulers/<name>.json`` of its released models), ``tiny_pipelines`` (name →
    builder of a random-weight pipeline for tests), ``real_size`` (its released models' architectures, for benchmarks),
    ``schedulers`` (the scheduler names it can run; ``None``: all).
    """

    name: ClassVar[str] = "generic"
    label: ClassVar[str] = "a pipeline img2img-lab has no family module for (its own get_timesteps, checked)"
    pipelines: ClassVar[dict[str, tuple[str, ...]]] = {}
    text_to_image: ClassVar[dict[str, str]] = {}
    no_strength: ClassVar[dict[str, str]] = {}
    refused: ClassVar[dict[str, str]] = {}
    scheduler_configs: ClassVar[tuple[str, ...]] = ()
    tiny_pipelines: ClassVar[dict[str, Callable]] = {}
    #: Real-size architectures of its released models (``data/architectures/<name>.json``; random weights).
    real_size: ClassVar[tuple[str, ...]] = ()
    applies_get_timesteps: ClassVar[bool] = True
    schedulers: ClassVar[tuple[str, ...] | None] = None
    #: The diffusers classes the batched engine reproduces, each with its batched conditioning class.
    batched_classes: ClassVar[dict[str, type]] = {}
    #: The latent blend of inpainting is decided by channel count where the denoiser is a UNet (or SD3's).
    counts_inpaint_channels: ClassVar[bool] = True
    #: Inpainting classes whose ``__call__`` refuses every ``padding_mask_crop`` (class → why).
    crop_refused: ClassVar[dict[str, str]] = {}
    #: Batched classes whose chunks keep no state on the pipeline, so a CPU sweep may run two of them at once
    #: (:mod:`img2img_lab.sweep.chunk_streams`); each is tested against chunks run one at a time.
    side_by_side: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipe):
        self.pipe = pipe

    # ------------------------------------------------------------------ declarations
    @classmethod
    def task_of(cls, class_name: str) -> str | None:
        """The task under which this family declares ``class_name`` (``None``: not one of its classes)."""
        return next((task for task, names in cls.pipelines.items() if class_name in names), None)

    @classmethod
    def class_names(cls) -> tuple[str, ...]:
        """Every diffusers class this module names: run, without a strength dial, or refused."""
        run = tuple(name for names in cls.pipelines.values() for name in names)
        return run + tuple(cls.no_strength) + tuple(cls.refused)

    # ------------------------------------------------------------------ sizes
    def size_multiple(self) -> int:
        """Each image side must be a multiple of this (the VAE's downscale factor here)."""
        factor = getattr(self.pipe, "vae_scale_factor", None)
        if factor is None and getattr(self.pipe, "vae", None) is not None:
            factor = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        return int(factor or 8)

    def native_resolution(self) -> int | None:
        """The side the model was trained at: the denoiser's sample size (or the pipeline's default) × VAE factor."""
        sample = getattr(getattr(self.denoiser(), "config", None), "sample_size", None)
        sample = sample or getattr(self.pipe, "default_sample_size", None)
        if isinstance(sample, (list, tuple)):
            sample = max(sample)
        factor = getattr(self.pipe, "vae_scale_factor", None) or self.size_multiple()
        return int(sample) * int(factor) if sample else None

    def denoiser(self):
        """The UNet or transformer."""
        return getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)

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
        try:
            return "which is < 1" in inspect.getsource(type(self.pipe).__call__)
        except (OSError, TypeError):
            return False

    # ------------------------------------------------------------------ inpainting
    def inpaint_method(self) -> str:
        """How this inpainting pipeline keeps the unmasked region: ``"latent blend"`` (the noised source's latents
        replace the denoised ones outside the mask after every step: 4-channel UNets, FLUX.1, SD3 with 16 channels)
        or ``"masked-image channels"`` (the denoiser takes the mask and the masked source as extra input channels:
        9-channel inpainting UNets)."""
        channels = getattr(getattr(self.denoiser(), "config", None), "in_channels", None)
        latent = getattr(getattr(getattr(self.pipe, "vae", None), "config", None), "latent_channels", 4)
        if self.counts_inpaint_channels:
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

    def control_refusal(self) -> str | None:
        """Why this pipeline's ControlNet(s) cannot be swept as the plan's control images and scales give them, with
        the fix (``None``: they can)."""
        return None

    def control_mode_counts(self) -> tuple[int | None, ...]:
        """How many modes each of the pipeline's ControlNets knows, in their order: a union ControlNet's
        ``num_control_type`` (SDXL's ControlNet++) or ``num_mode`` (FLUX.1's), ``None`` for a single-mode one (``()``:
        no ControlNet).

        >>> model.family.control_mode_counts()  # the embedded model: no ControlNet
        ()
        """
        controlnet = getattr(self.pipe, "controlnet", None)
        nets = getattr(controlnet, "nets", None) or ([controlnet] if controlnet is not None else [])
        configs = [getattr(net, "config", {}) for net in nets]
        return tuple(config.get("num_control_type") or config.get("num_mode") for config in configs)

    def control_arguments(self, arguments: dict) -> dict:
        """A plain call's ``arguments`` with its ControlNet arguments as this pipeline needs them (here as the axes
        give them)."""
        return arguments

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

    # ------------------------------------------------------------------ the VAE
    def encode_pixels(self, vae, pixels):
        """The VAE's latent distribution of preprocessed pixels (``vae.encode`` here)."""
        return vae.encode(pixels)

    def decode_latents(self, vae, latents):
        """Pixels of unscaled latents (``vae.decode`` here)."""
        return vae.decode(latents, return_dict=False)[0]

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.prepare_latents (the VAE encode; force_upcast as in SDXL)
    def vae_roundtrip(self, source, *, generator=None):
        """``source`` encoded by the pipeline's VAE (the latent sampled with ``generator``) and decoded: the floor every
        img2img output sits on; even strength 0 cannot be closer to the source.

        >>> from img2img_lab.models.handle import cell_generator
        >>> model.family.vae_roundtrip(source, generator=cell_generator(0)).size == source.size
        True
        """
        import torch
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

        pipe, vae = self.pipe, self.pipe.vae
        dtype = vae.dtype
        upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        with torch.no_grad():
            if upcast:
                vae.to(torch.float32)
            try:
                work_dtype = torch.float32 if upcast else dtype
                pixels = pipe.image_processor.preprocess(source).to(device=vae.device, dtype=work_dtype)
                latents = retrieve_latents(self.encode_pixels(vae, pixels), generator=generator)
                decoded = self.decode_latents(vae, latents)
            finally:
                if upcast:
                    vae.to(dtype)
        return pipe.image_processor.postprocess(decoded.float(), output_type="pil")[0]

    # ------------------------------------------------------------------ the batched engine
    def batched_conditioning(self) -> tuple[type | None, str]:
        """``(conditioning class, reason)``: what the batched engine needs of this pipeline (its prompt encoding,
        initial latents, per-sample inputs, guidance and decoding, done as its ``__call__`` does them: the class
        :attr:`batched_classes` names for it), or ``(None, why it runs per cell)``."""
        name = type(self.pipe).__name__
        if not self.batched_classes:
            return None, f"{name} is run per cell ({self.label} declares no batched conditioning)"
        if name not in self.batched_classes:
            return None, (f"{name} is run per cell (the batched engine reproduces plain calls of "
                          f"{', '.join(self.batched_classes)} only)")
        return self.batched_classes[name], name
