"""Stable Diffusion 1.x / 2.x: img2img, inpainting, PAG and ControlNet pipelines, the batched conditioning of plain
img2img, and the tiny random pipelines its tests run.

The strength rule is the base one (``init = min(int(N·s), N)``, ``timesteps[t_start·order:]``); inpainting
pipelines with a 4-channel UNet blend latents, 9-channel ones read the masked image as extra channels.

>>> StableDiffusionFamily.task_of("StableDiffusionControlNetInpaintPipeline")
'controlnet-inpaint'
>>> make_tiny_pipeline().vae_scale_factor, type(make_tiny_pipeline().scheduler).__name__
(2, 'PNDMScheduler')
"""

from __future__ import annotations

from contextlib import nullcontext

from img2img_lab.models.families.base import Family, masked_source, sample_latent
from img2img_lab.models.families.controlnet import ControlNetGuidance
from img2img_lab.models.families.pag import PAG_INPAINT_CROP, PAGGuidance
from img2img_lab.models.families.tiny_parts import (make_tiny_pipeline, make_tiny_sd2_v,  # noqa: F401
                                                   sd_pndm_scheduler, sd_variant)


class TextConditioning:
    """What the batched loop needs of Stable Diffusion, done as the pipeline's ``__call__`` does it.

    ``encode`` returns per (prompt, negative) the tensors each sample of that prompt sends to the UNet, as
    ``{"positive": {...}, "negative": {...}}`` (``encoder_hidden_states`` here); ``initial_latents`` turns a
    source's VAE distribution into the scaled initial latent (``prepare_latents``); ``decode`` turns final latents
    into images and NSFW flags.

    >>> family = TextConditioning(pipe, pipe.device, pipe.unet.dtype)  # the embedded model: 16 tokens of 128
    >>> pair = family.encode([("a red square", "")], (64, 64))[("a red square", "")]
    >>> tuple(pair["positive"]["encoder_hidden_states"].shape), sorted(pair["negative"])
    ((1, 16, 128), ['encoder_hidden_states'])
    """

    added_fields: tuple[str, ...] = ()
    per_sample_timesteps = False  # LCM's strengths step in lockstep, each at its own timestep (``timestep`` field)

    def __init__(self, pipe, device, dtype, *, size: tuple[int, int] | None = None):
        self.pipe, self.device, self.dtype, self.size = pipe, device, dtype, size

    def uses_cfg(self, cell) -> bool:
        """Whether the cell runs classifier-free guidance (a negative sample beside its positive one)."""
        return cell.guidance_scale > 1.0

    def sample_fields(self, cell) -> dict:
        """Per-sample denoiser inputs that come from the cell rather than its prompt (none here)."""
        return {}

    def condition_fields(self, cell, condition: dict | None) -> dict:
        """Per-sample denoiser inputs from the cell's source conditions (``control_image``; none here)."""
        return {}

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.prepare_latents (noise from each cell's generator)
    def start_latents(self, scheduler, timesteps, distribution, generator, *, cell, condition, source):
        """``(latents, fields, state)``: the cell's initial latent at ``timesteps[0]`` (the VAE sample, then the noise,
        from its generator), its per-sample condition fields, and what :meth:`after_step` needs of it."""
        from diffusers.utils.torch_utils import randn_tensor

        initial = self.initial_latents(distribution, generator)
        noise = randn_tensor(initial.shape, generator=generator, device=self.device, dtype=self.dtype)
        return self.noised(scheduler, initial, noise, timesteps[:1]), self.condition_fields(cell, condition), {}

    def after_step(self, scheduler, timesteps, step: int, latents, state: dict):
        """The cell's latents after its ``step`` (the scheduler's output here; inpainting blends the source back)."""
        return latents

    def step_fields(self, cell, step: int, steps: int) -> dict:
        """Per-sample denoiser inputs at the cell's ``step`` of its ``steps`` (none here)."""
        return {}

    def branches(self, text: dict, cfg: bool) -> list[dict]:
        """The samples one cell sends at each step, as fields: its negative and positive prompt's under CFG."""
        return [text["negative"], text["positive"]] if cfg else [text["positive"]]

    def combined(self, cell, predictions, t, cfg: bool):
        """One cell's prediction from its samples' (in :meth:`branches`' order) at ``t``."""
        return self.guided(predictions[0:1], predictions[1:2], cell.guidance_scale) if cfg else predictions

    def guided(self, uncond, text, guidance_scale: float):
        """Classifier-free guidance of one cell's two predictions."""
        return uncond + guidance_scale * (text - uncond)

    def denoising(self):
        """A context manager around a chunk's denoising loop (PAG puts its attention processors on for it)."""
        return nullcontext()

    def noised(self, scheduler, latents, noise, timestep):
        """The initial latent at the group's first timestep (``add_noise``)."""
        return scheduler.add_noise(latents, noise, timestep)

    def model_input(self, scheduler, latents, t):
        """The latents as the denoiser takes them at ``t`` (``scale_model_input``)."""
        return scheduler.scale_model_input(latents, t)

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.__call__ (step 9: the UNet call)
    def predict(self, inputs, t, fields: dict):
        """The denoiser's output for a batch: ``fields`` holds one row per sample of every per-sample input."""
        extra = {"added_cond_kwargs": {name: fields[name] for name in self.added_fields}} if self.added_fields else {}
        return self.pipe.unet(inputs, t, encoder_hidden_states=fields["encoder_hidden_states"], return_dict=False,
                              **extra)[0]

    def probe_fields(self, size) -> dict:
        """Per-sample condition fields of zeros at ``size``, for a memory probe (none here)."""
        return {}

    def blank_latents(self, size):
        """Zero latents of one sample at ``size`` (width, height), shaped as the denoiser takes them."""
        import torch

        factor = self.pipe.vae_scale_factor
        return torch.zeros(1, self.pipe.unet.config.in_channels, size[1] // factor, size[0] // factor,
                           device=self.device, dtype=self.dtype)

    def encode(self, keys, size) -> dict:
        import torch

        conditioning = {}
        with torch.no_grad():
            for prompt, negative in keys:
                positive, negative_embeds = self.pipe.encode_prompt(prompt, self.device, 1, True, negative or None)
                conditioning[(prompt, negative)] = {"positive": {"encoder_hidden_states": positive},
                                                    "negative": {"encoder_hidden_states": negative_embeds}}
        return conditioning

    def encode_source(self, source):
        """The VAE's latent distribution of a prepared source (one encoder pass)."""
        return self.encode_pixels(self.pipe.image_processor.preprocess(source).to(device=self.device, dtype=self.dtype))

    def encode_pixels(self, pixels):
        """The VAE's latent distribution of preprocessed pixels."""
        import torch

        with torch.no_grad():
            return self.pipe.vae.encode(pixels).latent_dist

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.prepare_latents
    def initial_latents(self, distribution, generator):
        return self.pipe.vae.config.scaling_factor * sample_latent(distribution, generator)

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.__call__ (step 9: decode, safety checker)
    def decode(self, latents, conditioning_dtype):
        import torch

        with torch.no_grad():
            decoded = self.pipe.vae.decode(latents / self.pipe.vae.config.scaling_factor, return_dict=False)[0]
            return self.pipe.run_safety_checker(decoded, self.device, conditioning_dtype)


class ControlNetConditioning(ControlNetGuidance, TextConditioning):
    """What the batched loop needs of ``StableDiffusionControlNetImg2ImgPipeline``: Stable Diffusion's text, latents
    and decode with :class:`~img2img_lab.models.families.controlnet.ControlNetGuidance`'s control images and scales.

    >>> cn = StableDiffusionFamily.tiny_pipelines["sd-controlnet"]()
    >>> conditioner = ControlNetConditioning(cn, cn.device, cn.unet.dtype, size=(32, 32))
    >>> from types import SimpleNamespace
    >>> cell = SimpleNamespace(controlnet_conditioning_scale=0.5, control_guidance_start=None, control_guidance_end=0.5)
    >>> [conditioner.step_fields(cell, step, 4)["conditioning_scale"].item() for step in range(4)]
    [0.5, 0.5, 0.0, 0.0]
    """


class InpaintConditioning(TextConditioning):
    """What the batched loop needs of ``StableDiffusionInpaintPipeline`` (no ``padding_mask_crop``): the initial latent
    as its ``prepare_latents`` makes it (pure noise × ``init_noise_sigma`` at strength 1), the masked source encoded
    and sampled with the cell's generator after the noise (``prepare_mask_latents``), and then either the latent
    blend after every step (a 4-channel UNet: the source noised to the next timestep outside the mask) or the mask
    and masked-source latents as extra input channels (a 9-channel UNet).

    >>> inpaint = StableDiffusionFamily.tiny_pipelines["sd-inpaint"]()
    >>> conditioner = InpaintConditioning(inpaint, inpaint.device, inpaint.unet.dtype, size=(32, 32))
    >>> conditioner.latent_blend
    True
    """

    def __init__(self, pipe, device, dtype, *, size=None):
        super().__init__(pipe, device, dtype, size=size)
        self.latent_blend = pipe.unet.config.in_channels == pipe.vae.config.latent_channels
        self._masks: dict[tuple, tuple] = {}

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint.StableDiffusionInpaintPipeline.prepare_mask_latents (the mask at latent size; the masked source's VAE distribution)
    def _mask_inputs(self, source, mask_image):
        import torch

        key = (id(source), id(mask_image))
        if key not in self._masks:
            condition, masked = masked_source(self.pipe, source, mask_image, self.size)
            factor, (width, height) = self.pipe.vae_scale_factor, self.size
            mask = torch.nn.functional.interpolate(condition, size=(height // factor, width // factor))
            self._masks[key] = (mask.to(device=self.device, dtype=self.dtype),
                                self.encode_pixels(masked.to(device=self.device, dtype=self.dtype)))
        return self._masks[key]

    def mask_latents(self, distribution, generator):
        """The masked source's latents (``_encode_vae_image``: the sample times the VAE's scaling factor)."""
        return self.pipe.vae.config.scaling_factor * sample_latent(distribution, generator)

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint.StableDiffusionInpaintPipeline.prepare_latents (and the masked image's latents after it)
    def start_latents(self, scheduler, timesteps, distribution, generator, *, cell, condition, source):
        from diffusers.utils.torch_utils import randn_tensor

        strength_max = cell.strength == 1.0
        image_latents = (self.mask_latents(distribution, generator) if self.latent_blend or not strength_max
                         else None)
        width, height = self.size
        factor = self.pipe.vae_scale_factor
        noise = randn_tensor((1, self.pipe.vae.config.latent_channels, height // factor, width // factor),
                             generator=generator, device=self.device, dtype=self.dtype)
        latents = (noise * scheduler.init_noise_sigma if strength_max
                   else scheduler.add_noise(image_latents, noise, timesteps[:1]))
        mask, masked_distribution = self._mask_inputs(source, condition["mask_image"])
        masked_latents = self.mask_latents(masked_distribution, generator)
        fields = self.condition_fields(cell, condition)  # a ControlNet's control image
        if self.latent_blend:
            return latents, fields, {"image_latents": image_latents, "noise": noise, "mask": mask}
        return latents, {**fields, "mask": mask, "masked_image_latents": masked_latents}, {}

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint.StableDiffusionInpaintPipeline.__call__ (step 11: the latent blend of a 4-channel UNet)
    def after_step(self, scheduler, timesteps, step: int, latents, state: dict):
        import torch

        if not self.latent_blend:
            return latents
        proper = state["image_latents"]
        if step < len(timesteps) - 1:
            proper = scheduler.add_noise(proper, state["noise"], torch.tensor([timesteps[step + 1]]))
        return (1 - state["mask"]) * proper + state["mask"] * latents

    def probe_fields(self, size) -> dict:
        if self.latent_blend:
            return {}
        latents = self.blank_latents(size)
        return {"mask": latents[:, :1], "masked_image_latents": latents}

    def blank_latents(self, size):
        import torch

        factor = self.pipe.vae_scale_factor
        return torch.zeros(1, self.pipe.vae.config.latent_channels, size[1] // factor, size[0] // factor,
                           device=self.device, dtype=self.dtype)

    def predict(self, inputs, t, fields: dict):
        return super().predict(self.unet_inputs(inputs, fields), t, fields)

    def unet_inputs(self, inputs, fields: dict):
        """A 9-channel UNet's input: the latents, the mask and the masked source's latents as channels."""
        import torch

        return torch.cat([inputs, fields["mask"], fields["masked_image_latents"]], dim=1) if "mask" in fields else inputs


class ControlNetInpaintConditioning(InpaintConditioning, ControlNetConditioning):
    """``StableDiffusionControlNetInpaintPipeline`` (one ControlNet, no crop): inpainting's latents, mask and blend
    (:class:`InpaintConditioning`) with the ControlNet's residuals (:class:`ControlNetConditioning`); the ControlNet
    reads the 4 latent channels and the UNet all of its own (``control_model_input``).

    >>> cn = StableDiffusionFamily.tiny_pipelines["sd-controlnet-inpaint"]()
    >>> StableDiffusionFamily(cn).batched_conditioning()[1]
    'StableDiffusionControlNetInpaintPipeline'
    """

    def probe_fields(self, size) -> dict:
        return {**ControlNetGuidance.probe_fields(self, size), **InpaintConditioning.probe_fields(self, size)}

    def predict(self, inputs, t, fields: dict):
        return self.controlled(inputs, t, fields, unet_inputs=self.unet_inputs(inputs, fields))


class PAGConditioning(PAGGuidance, TextConditioning):
    """``StableDiffusionPAGImg2ImgPipeline``: img2img with :class:`~img2img_lab.models.families.pag.PAGGuidance`."""


class PAGInpaintConditioning(PAGGuidance, InpaintConditioning):
    """``StableDiffusionPAGInpaintPipeline``: inpainting with PAG; the perturbed sample carries the cell's mask (and
    masked-source latents) as its other samples do, and the blend takes the cell's one prediction."""


class ControlNetPAGInpaintConditioning(PAGGuidance, ControlNetInpaintConditioning):
    """``StableDiffusionControlNetPAGInpaintPipeline``: ControlNet inpainting with PAG; the ControlNet reads the
    perturbed sample too (its attention is not perturbed: only the UNet's PAG layers are)."""

    pooled_guess_mode = False  # its __call__ never runs guess mode


class StableDiffusionFamily(Family):
    name, label = "sd", "Stable Diffusion 1.x / 2.x"
    pipelines = {
        "img2img": ("StableDiffusionImg2ImgPipeline", "StableDiffusionPAGImg2ImgPipeline"),
        "inpaint": ("StableDiffusionInpaintPipeline", "StableDiffusionPAGInpaintPipeline"),
        "controlnet-img2img": ("StableDiffusionControlNetImg2ImgPipeline",),
        "controlnet-inpaint": ("StableDiffusionControlNetInpaintPipeline",
                               "StableDiffusionControlNetPAGInpaintPipeline"),
    }
    text_to_image = {"StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
                     "StableDiffusionPAGPipeline": "StableDiffusionPAGImg2ImgPipeline",
                     "StableDiffusionControlNetPipeline": "StableDiffusionControlNetImg2ImgPipeline"}
    no_strength = {"StableUnCLIPImg2ImgPipeline": "makes variations from an image embedding, starting from noise: it "
                                                  "has no strength dial"}
    crop_refused = {"StableDiffusionPAGInpaintPipeline": PAG_INPAINT_CROP}
    scheduler_configs = ("sd15", "sd21")
    real_size = ("sd15",)
    tiny_pipelines = {
        "sd1": make_tiny_pipeline,  # PNDM, SD 1.x betas, epsilon
        "sd2-v": make_tiny_sd2_v,  # DDIM, v-prediction (SD 2.x 768-v)
        "sd-pag": lambda: sd_variant("StableDiffusionPAGImg2ImgPipeline"),
        "sd-inpaint": lambda: sd_variant("StableDiffusionInpaintPipeline"),  # 4-channel UNet: latent blend
        "sd-inpaint-9": lambda: sd_variant("StableDiffusionInpaintPipeline", unet_channels=9),  # masked-image channels
        "sd-pag-inpaint": lambda: sd_variant("StableDiffusionPAGInpaintPipeline"),
        "sd-controlnet": lambda: sd_variant("StableDiffusionControlNetImg2ImgPipeline", controlnet=True),
        "sd-controlnet-inpaint": lambda: sd_variant("StableDiffusionControlNetInpaintPipeline", controlnet=True),
        "sd-controlnet-pag-inpaint": lambda: sd_variant("StableDiffusionControlNetPAGInpaintPipeline", controlnet=True),
    }

    #: The classes the batched engine reproduces, and how.
    batched_classes: dict[str, type] = {"StableDiffusionImg2ImgPipeline": TextConditioning,
                                        "StableDiffusionControlNetImg2ImgPipeline": ControlNetConditioning,
                                        "StableDiffusionInpaintPipeline": InpaintConditioning,
                                        "StableDiffusionControlNetInpaintPipeline": ControlNetInpaintConditioning,
                                        "StableDiffusionPAGImg2ImgPipeline": PAGConditioning,
                                        "StableDiffusionPAGInpaintPipeline": PAGInpaintConditioning,
                                        "StableDiffusionControlNetPAGInpaintPipeline": ControlNetPAGInpaintConditioning}
    side_by_side = ("StableDiffusionImg2ImgPipeline",)

    def batched_conditioning(self) -> tuple[type | None, str]:
        conditioning, reason = super().batched_conditioning()
        if conditioning is not None and getattr(self.pipe.unet.config, "time_cond_proj_dim", None) is not None:
            return None, "the UNet has a guidance embedding (LCM-style): run per cell"
        return conditioning, reason
