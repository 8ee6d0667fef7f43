"""Stable Diffusion 3 / 3.5: img2img, PAG img2img and inpainting. The SD3 rule: ``init = N·s`` (no ``int``), then
``get_timesteps``; with a dynamic-shift scheduler ``mu`` follows the image's token count; sizes are multiples of the
VAE factor times the transformer's patch size.

>>> from img2img_lab.models.handle import as_model
>>> step = as_model(SD3Family.tiny_pipelines["sd3"]()).step_plan("default", 4, 0.3, width=32, height=32)
>>> step.executed_steps, step.t_start   # SD arithmetic would say 1 step from index 3
(2, 2)
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family, calculate_shift, sample_latent
from img2img_lab.models.families.flow_inpaint import FlowInpaint
from img2img_lab.models.families.pag import PAGGuidance
from img2img_lab.models.families.stable_diffusion import TextConditioning
from img2img_lab.models.families.tiny_parts import as_class, tiny_clip, tiny_t5, tiny_vae


def call_defaults(pipe) -> dict:
    """The defaults of the pipeline's ``__call__`` (e.g. ``max_sequence_length``)."""
    import inspect

    return {name: parameter.default for name, parameter in inspect.signature(type(pipe).__call__).parameters.items()}


class SD3Conditioning(TextConditioning):
    """What the batched loop needs of SD3 / 3.5, done as ``StableDiffusion3Img2ImgPipeline.__call__`` does it: three
    text encoders (sequence and pooled embeddings, a negative branch for classifier-free guidance), flow-matching noise
    (``scale_noise``, no input scaling), the VAE's shift and scale, and the transformer called with the timestep per
    sample.

    >>> sd3 = SD3Family.tiny_pipelines["sd3"]()
    >>> pair = SD3Conditioning(sd3, sd3.device, sd3.transformer.dtype).encode([("a red square", "")], (32, 32))
    >>> sorted(pair[("a red square", "")]["negative"])
    ['encoder_hidden_states', 'pooled_projections']
    """

    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img.StableDiffusion3Img2ImgPipeline.__call__ (step 3: encode_prompt)
    def encode(self, keys, size) -> dict:
        import torch

        length = call_defaults(self.pipe)["max_sequence_length"]
        conditioning = {}
        with torch.no_grad():
            for prompt, negative in keys:
                positive, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
                    prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=negative or None,
                    do_classifier_free_guidance=True, device=self.device, clip_skip=None, num_images_per_prompt=1,
                    max_sequence_length=length)
                conditioning[(prompt, negative)] = {
                    "positive": {"encoder_hidden_states": positive, "pooled_projections": pooled},
                    "negative": {"encoder_hidden_states": negative_embeds, "pooled_projections": negative_pooled}}
        return conditioning

    def encode_source(self, source):
        pixels = self.pipe.image_processor.preprocess(source, height=source.height, width=source.width)
        return self.encode_pixels(pixels.to(device=self.device, dtype=self.dtype))

    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img.StableDiffusion3Img2ImgPipeline.prepare_latents
    def initial_latents(self, distribution, generator):
        config = self.pipe.vae.config
        return (sample_latent(distribution, generator) - config.shift_factor) * config.scaling_factor

    def noised(self, scheduler, latents, noise, timestep):
        return scheduler.scale_noise(latents, timestep, noise)

    def model_input(self, scheduler, latents, t):
        return latents  # flow matching scales nothing

    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img.StableDiffusion3Img2ImgPipeline.__call__ (step 7: the transformer call)
    def predict(self, inputs, t, fields: dict):
        return self.pipe.transformer(hidden_states=inputs, timestep=t.expand(inputs.shape[0]),
                                     encoder_hidden_states=fields["encoder_hidden_states"],
                                     pooled_projections=fields["pooled_projections"], joint_attention_kwargs=None,
                                     return_dict=False)[0]

    def blank_latents(self, size):
        import torch

        factor = self.pipe.vae_scale_factor
        return torch.zeros(1, self.pipe.transformer.config.in_channels, size[1] // factor, size[0] // factor,
                           device=self.device, dtype=self.dtype)

    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img.StableDiffusion3Img2ImgPipeline.__call__ (the decode)
    def decode(self, latents, conditioning_dtype):
        import torch

        config = self.pipe.vae.config
        with torch.no_grad():
            return self.pipe.vae.decode(latents / config.scaling_factor + config.shift_factor, return_dict=False)[0], None


def make_tiny_sd3(*, latent_channels: int = 4, layers: int = 1, transformer_channels: int | None = None):
    """A random-weight ``StableDiffusion3Img2ImgPipeline``: two CLIP encoders with projections, a T5, a one-layer
    transformer (patch 2; ``transformer_channels`` input channels, the latent channels unless given), SD3 medium's
    flow-matching scheduler (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Img2ImgPipeline

    text_encoder, tokenizer = tiny_clip(32, projection=True)
    text_encoder_2, tokenizer_2 = tiny_clip(32, projection=True)
    text_encoder_3, tokenizer_3 = tiny_t5(32)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=transformer_channels or latent_channels, num_layers=layers,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        pooled_projection_dim=64, out_channels=latent_channels)
    return StableDiffusion3Img2ImgPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(latent_channels, flow=True), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3)


class SD3PAGConditioning(PAGGuidance, SD3Conditioning):
    """``StableDiffusion3PAGImg2ImgPipeline``: SD3 img2img with :class:`~img2img_lab.models.families.pag.PAGGuidance`
    (the perturbed sample takes the positive prompt's embeddings and pooled projection; the PAG layers' joint
    attention keeps each image token to itself and the prompt)."""


class SD3InpaintConditioning(FlowInpaint, SD3Conditioning):
    """``StableDiffusion3InpaintPipeline`` (no crop): SD3's img2img with
    :class:`~img2img_lab.models.families.flow_inpaint.FlowInpaint`'s latents and blend on unpacked latents, the mask
    broadcast over the channels (``prepare_latents``, ``prepare_mask_latents``, the loop's blend). At strength 1 the
    pipeline starts from the noise itself, which ``scale_noise`` at σ 1 returns. A 33-channel transformer (16 latent
    channels, the mask, the masked source's 16) blends nothing: it reads the mask and the masked source as channels.

    >>> inpaint = SD3Family.tiny_pipelines["sd3-inpaint"]()
    >>> SD3InpaintConditioning(inpaint, inpaint.device, inpaint.transformer.dtype, size=(32, 32)).latent_blend
    True
    """

    def __init__(self, pipe, device, dtype, *, size=None):
        super().__init__(pipe, device, dtype, size=size)
        self.latent_blend = pipe.transformer.config.in_channels == pipe.vae.config.latent_channels

    def _pack(self, latents):
        return latents  # SD3's transformer patches its latents itself

    def _mask_channels(self) -> int:
        return 1

    def _latent_side(self, pixels: int) -> int:
        return int(pixels) // self.pipe.vae_scale_factor

    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_inpaint.StableDiffusion3InpaintPipeline.prepare_latents (return_image_latents only for 16 channels) and prepare_mask_latents
    def start_latents(self, scheduler, timesteps, distribution, generator, *, cell, condition, source):
        from diffusers.utils.torch_utils import randn_tensor

        if self.latent_blend:
            return super().start_latents(scheduler, timesteps, distribution, generator, cell=cell,
                                         condition=condition, source=source)
        strength_max = cell.strength == 1.0  # the source is encoded (a draw) only below strength 1
        initial = None if strength_max else self.initial_latents(distribution, generator)
        noise = randn_tensor(self.blank_latents(self.size).shape, generator=generator, device=self.device,
                             dtype=self.dtype)
        latents = noise if strength_max else scheduler.scale_noise(initial, timesteps[:1], noise)
        mask, masked_distribution = self._mask_inputs(source, condition["mask_image"])
        masked_latents = self.initial_latents(masked_distribution, generator)  # shifted and scaled, as the source
        return latents, {"mask": mask, "masked_image_latents": masked_latents}, {}

    def after_step(self, scheduler, timesteps, step: int, latents, state: dict):
        return super().after_step(scheduler, timesteps, step, latents, state) if self.latent_blend else latents

    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_inpaint.StableDiffusion3InpaintPipeline.__call__ (step 8: a 33-channel transformer's input)
    def predict(self, inputs, t, fields: dict):
        import torch

        if not self.latent_blend:
            inputs = torch.cat([inputs, fields["mask"], fields["masked_image_latents"]], dim=1)
        return super().predict(inputs, t, fields)

    def blank_latents(self, size):
        import torch

        factor = self.pipe.vae_scale_factor
        return torch.zeros(1, self.pipe.vae.config.latent_channels, size[1] // factor, size[0] // factor,
                           device=self.device, dtype=self.dtype)

    def probe_fields(self, size) -> dict:
        if self.latent_blend:
            return {}
        latents = self.blank_latents(size)
        return {"mask": latents[:, :1], "masked_image_latents": latents}

    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_inpaint.StableDiffusion3InpaintPipeline.__call__ (the decode)
    def decode(self, latents, conditioning_dtype):
        """As the pipeline decodes: the latents unscaled but not shifted back (its img2img sibling adds the VAE's
        ``shift_factor``; the inpainting pipeline does not, and the engine reproduces the plain call)."""
        import torch

        with torch.no_grad():
            return self.pipe.vae.decode(latents / self.pipe.vae.config.scaling_factor, return_dict=False)[0], None


def make_tiny_sd3_inpaint(*, transformer_channels: int = 16):
    """A random-weight ``StableDiffusion3InpaintPipeline`` (16 latent channels, as SD3's VAE has): a transformer of
    16 input channels (the latent blend) or 33 (the mask and the masked source as channels).

    >>> make_tiny_sd3_inpaint(transformer_channels=33).transformer.config.out_channels
    16
    """
    return as_class(make_tiny_sd3(latent_channels=16, transformer_channels=transformer_channels),
                    "StableDiffusion3InpaintPipeline")


class SD3Family(Family):
    name, label = "sd3", "Stable Diffusion 3 / 3.5"
    pipelines = {"img2img": ("StableDiffusion3Img2ImgPipeline", "StableDiffusion3PAGImg2ImgPipeline"),
                 "inpaint": ("StableDiffusion3InpaintPipeline",)}
    text_to_image = {"StableDiffusion3Pipeline": "StableDiffusion3Img2ImgPipeline",
                     "StableDiffusion3PAGPipeline": "StableDiffusion3PAGImg2ImgPipeline"}
    no_strength = {"StableDiffusion3ControlNetInpaintingPipeline": "inpaints through a ControlNet from pure noise: "
                                                                   "it has no strength dial"}
    scheduler_configs = ("sd35",)
    real_size = ("sd35-medium",)
    tiny_pipelines = {
        "sd3": make_tiny_sd3,  # flow matching, shift 3 (SD3 medium)
        # two blocks: PAG's default layer is "blocks.1", and a saved pipeline loads with its default
        "sd3-pag": lambda: as_class(make_tiny_sd3(layers=2), "StableDiffusion3PAGImg2ImgPipeline"),
        "sd3-inpaint": make_tiny_sd3_inpaint,  # 16-channel transformer (latent blend)
    }
    schedulers = ("default",)
    batched_classes = {"StableDiffusion3Img2ImgPipeline": SD3Conditioning,
                       "StableDiffusion3InpaintPipeline": SD3InpaintConditioning,
                       "StableDiffusion3PAGImg2ImgPipeline": SD3PAGConditioning}

    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * int(self.pipe.transformer.config.patch_size)

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        if not scheduler.config.get("use_dynamic_shifting", None):
            return {}
        patch = self.pipe.transformer.config.patch_size
        tokens = (height // self.pipe.vae_scale_factor // patch) * (width // self.pipe.vae_scale_factor // patch)
        return {"mu": calculate_shift(scheduler.config, tokens, 1.16)}
