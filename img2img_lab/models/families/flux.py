"""FLUX.1: img2img, inpainting, Control (channel-concatenated control latents) and ControlNet pipelines.

The FLUX rule: ``sigmas = linspace(1, 1/N, N)`` and ``mu`` from the packed token count
(``(H // vae // 2) · (W // vae // 2)``), then the SD3 ``get_timesteps`` (``N·s``, no ``int``); sizes are multiples
of twice the VAE factor (latents are packed in 2x2 patches). FLUX.1-dev embeds the guidance scale, schnell ignores
it. :class:`TrueCFGFluxFamily` is the same rule with true classifier-free guidance (Chroma, Qwen-Image, Z-Image).

>>> FluxFamily(FluxFamily.tiny_pipelines["flux-schnell"]()).ignored_arguments()["guidance_scale"]
'this FLUX.1 transformer has no guidance embedding (schnell-style)'
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family, calculate_shift
from img2img_lab.models.families.tiny_parts import as_class, tiny_clip, tiny_t5, tiny_vae, unzeroed


def flux_dev_scheduler():
    """FLUX.1-dev's ``scheduler/scheduler_config.json``: flow matching with dynamic shifting."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                           max_shift=1.15, shift=3.0, use_dynamic_shifting=True)


def _transformer(*, guidance: bool, in_channels: int = 16, out_channels: int | None = None):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=in_channels, out_channels=out_channels, num_layers=1,
                                  num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                  joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                  guidance_embeds=guidance)


def make_tiny_flux(*, guidance: bool = True):
    """A random-weight ``FluxImg2ImgPipeline``: CLIP + T5, a one-layer transformer; FLUX.1-dev's scheduler and a
    guidance embedding, or FLUX.1-schnell's constant shift without one."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline

    text_encoder, tokenizer = tiny_clip(32)
    text_encoder_2, tokenizer_2 = tiny_t5(32)
    transformer = _transformer(guidance=guidance)
    scheduler = flux_dev_scheduler() if guidance else FlowMatchEulerDiscreteScheduler(shift=1.0,
                                                                                      use_dynamic_shifting=False)
    return FluxImg2ImgPipeline(scheduler=scheduler, vae=tiny_vae(4, flow=True), text_encoder=text_encoder,
                               tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                               transformer=transformer)


def _controlnet():
    from diffusers import FluxControlNetModel

    return unzeroed(FluxControlNetModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                        pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True))


def _control(class_name: str):
    """FLUX.1 Control: the packed control latents are concatenated to the packed latents (twice the channels in)."""
    return as_class(make_tiny_flux(), class_name, transformer=_transformer(guidance=True, in_channels=32,
                                                                           out_channels=16))


class FluxFamily(Family):
    name, label = "flux", "FLUX.1"
    pipelines = {
        "img2img": ("FluxImg2ImgPipeline",),
        "inpaint": ("FluxInpaintPipeline",),
        "controlnet-img2img": ("FluxControlImg2ImgPipeline", "FluxControlNetImg2ImgPipeline"),
        "controlnet-inpaint": ("FluxControlInpaintPipeline", "FluxControlNetInpaintPipeline"),
    }
    text_to_image = {"FluxPipeline": "FluxImg2ImgPipeline", "FluxControlPipeline": "FluxControlImg2ImgPipeline",
                     "FluxControlNetPipeline": "FluxControlNetImg2ImgPipeline"}
    no_strength = {"FluxKontextPipeline": "edits from a reference image and always starts from noise: it has no "
                                          "strength dial",
                   "FluxKontextInpaintPipeline": "edits from a reference image and always starts from noise: it has "
                                                 "no strength dial"}
    scheduler_configs = ("flux-dev", "flux-schnell")
    real_size = ("flux-dev-reduced",)
    tiny_pipelines = {
        "flux-dev": make_tiny_flux,  # guidance embedding; flow matching, dynamic shifting (FLUX.1-dev)
        "flux-schnell": lambda: make_tiny_flux(guidance=False),  # no guidance; constant shift 1 (schnell)
        "flux-inpaint": lambda: as_class(make_tiny_flux(), "FluxInpaintPipeline"),
        "flux-control": lambda: _control("FluxControlImg2ImgPipeline"),
        "flux-control-inpaint": lambda: _control("FluxControlInpaintPipeline"),
        "flux-controlnet": lambda: as_class(make_tiny_flux(), "FluxControlNetImg2ImgPipeline",
                                            controlnet=_controlnet()),
        "flux-controlnet-inpaint": lambda: as_class(make_tiny_flux(), "FluxControlNetInpaintPipeline",
                                                    controlnet=_controlnet()),
        "flux-kontext": lambda: as_class(make_tiny_flux(), "FluxKontextPipeline"),  # no strength: refused
    }
    schedulers = ("default",)
    counts_inpaint_channels = False  # the transformer always blends latents

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
                "mu": calculate_shift(scheduler.config, tokens, 1.15)}


class TrueCFGFluxFamily(FluxFamily):
    """The FLUX.1 rule with true classifier-free guidance: guidance above 1 runs a negative branch, and the negative
    prompt is used wherever ``__call__`` takes one. Subclassed by the modules of the families that use it; it
    declares no class itself."""

    pipelines, text_to_image, no_strength, refused, scheduler_configs, tiny_pipelines, real_size = (
        {}, {}, {}, {}, (), {}, ())

    def guidance_used(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def ignored_arguments(self) -> dict[str, str]:
        return Family.ignored_arguments(self)
