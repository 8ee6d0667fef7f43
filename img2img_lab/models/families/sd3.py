"""Stable Diffusion 3 / 3.5: img2img, PAG img2img and inpainting. The SD3 rule: ``init = N·s`` (no ``int``), then
``get_timesteps``; with a dynamic-shift scheduler ``mu`` follows the image's token count; sizes are multiples of the
VAE factor times the transformer's patch size.

>>> from img2img_lab.models.handle import as_model
>>> step = as_model(SD3Family.tiny_pipelines["sd3"]()).step_plan("default", 4, 0.3, width=32, height=32)
>>> step.executed_steps, step.t_start   # SD arithmetic would say 1 step from index 3
(2, 2)
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family, calculate_shift
from img2img_lab.models.families.tiny_parts import as_class, tiny_clip, tiny_t5, tiny_vae


def make_tiny_sd3(*, latent_channels: int = 4, layers: int = 1):
    """A random-weight ``StableDiffusion3Img2ImgPipeline``: two CLIP encoders with projections, a T5, a one-layer
    transformer (patch 2), SD3 medium's flow-matching scheduler (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Img2ImgPipeline

    text_encoder, tokenizer = tiny_clip(32, projection=True)
    text_encoder_2, tokenizer_2 = tiny_clip(32, projection=True)
    text_encoder_3, tokenizer_3 = tiny_t5(32)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=latent_channels, num_layers=layers,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=latent_channels)
    return StableDiffusion3Img2ImgPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(latent_channels, flow=True), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3)


def _inpaint():
    """SD3 inpainting needs 16 latent channels, as SD3's VAE has."""
    return as_class(make_tiny_sd3(latent_channels=16), "StableDiffusion3InpaintPipeline")


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
        "sd3-inpaint": _inpaint,  # 16-channel transformer (latent blend)
    }
    schedulers = ("default",)

    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * int(self.pipe.transformer.config.patch_size)

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        if not scheduler.config.get("use_dynamic_shifting", None):
            return {}
        patch = self.pipe.transformer.config.patch_size
        tokens = (height // self.pipe.vae_scale_factor // patch) * (width // self.pipe.vae_scale_factor // patch)
        return {"mu": calculate_shift(scheduler.config, tokens, 1.16)}
