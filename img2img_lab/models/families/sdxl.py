"""Stable Diffusion XL (and Turbo): img2img, inpainting, PAG and ControlNet pipelines, the batched conditioning of
plain img2img (two text encoders, pooled embeddings, added time ids, the VAE's ``force_upcast`` and
``latents_mean/std``), and the tiny random pipelines its tests run. The strength rule is Stable Diffusion's.

>>> SDXLFamily.task_of("StableDiffusionXLControlNetPAGImg2ImgPipeline")
'controlnet-img2img'
>>> sdxl = SDXLFamily.tiny_pipelines["sdxl"]()
>>> pair = SDXLConditioning(sdxl, sdxl.device, sdxl.unet.dtype).encode([("a red square", "")], (64, 64))
>>> sorted(pair[("a red square", "")]["positive"]) == ["encoder_hidden_states", "text_embeds", "time_ids"]
True
"""

from __future__ import annotations

from img2img_lab.models.families.base import sample_latent
from img2img_lab.models.families.controlnet import UnionControlNetGuidance
from img2img_lab.models.families.pag import PAGGuidance
from img2img_lab.models.families.stable_diffusion import (ControlNetConditioning, ControlNetInpaintConditioning,
                                                          InpaintConditioning, StableDiffusionFamily,
                                                          TextConditioning)
from img2img_lab.models.families.tiny_parts import (as_class, tiny_clip, tiny_vae, unet_controlnet,
                                                    unet_union_controlnet)


class SDXLConditioning(TextConditioning):
    """SDXL (and Turbo): two text encoders, a pooled embedding and added time ids per sample; the VAE runs in
    float32 where ``force_upcast`` says so; latents may be normalised by ``latents_mean``/``latents_std``."""

    added_fields = ("text_embeds", "time_ids")

    # Adapted from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img.StableDiffusionXLImg2ImgPipeline.__call__ (steps 3 and 8: encode_prompt, _get_add_time_ids)
    def encode(self, keys, size) -> dict:
        import inspect

        import torch

        defaults = {name: parameter.default
                    for name, parameter in inspect.signature(type(self.pipe).__call__).parameters.items()}
        text_projection = (self.pipe.text_encoder_2.config.projection_dim if self.pipe.text_encoder_2 is not None
                           else None)
        conditioning = {}
        with torch.no_grad():
            for prompt, negative in keys:
                positive, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
                    prompt=prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                    negative_prompt=negative or None)
                time_ids, negative_time_ids = self._time_ids(defaults, size, positive.dtype,
                                                             text_projection or int(pooled.shape[-1]))
                conditioning[(prompt, negative)] = {
                    "positive": {"encoder_hidden_states": positive, "text_embeds": pooled,
                                 "time_ids": time_ids.to(self.device)},
                    "negative": {"encoder_hidden_states": negative_embeds, "text_embeds": negative_pooled,
                                 "time_ids": negative_time_ids.to(self.device)}}
        return conditioning

    def _time_ids(self, defaults: dict, size, dtype, projection: int):
        """The pipeline's ``_get_add_time_ids`` at the call's defaults, the image's size as original and target size;
        ``StableDiffusionXLControlNetInpaintPipeline``'s takes no negative sizes."""
        import inspect

        width, height = size
        common = ((height, width), defaults["crops_coords_top_left"], (height, width), defaults["aesthetic_score"],
                  defaults["negative_aesthetic_score"])
        if "negative_original_size" not in inspect.signature(self.pipe._get_add_time_ids).parameters:
            return self.pipe._get_add_time_ids(*common, dtype=dtype, text_encoder_projection_dim=projection)
        return self.pipe._get_add_time_ids(*common, (height, width), defaults["negative_crops_coords_top_left"],
                                           (height, width), dtype=dtype, text_encoder_projection_dim=projection)

    def _upcast(self) -> bool:
        """Whether the VAE must run in float32 (``force_upcast``) while the model runs in a lower precision."""
        import torch

        return bool(self.pipe.vae.config.force_upcast) and self.dtype != torch.float32

    # Adapted from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img.StableDiffusionXLImg2ImgPipeline.prepare_latents (the VAE's force_upcast; the inpainting pipeline's _encode_vae_image does the same)
    def encode_pixels(self, pixels):
        import torch

        vae = self.pipe.vae
        with torch.no_grad():
            if self._upcast():  # prepare_latents: image.float(), the VAE in float32, back afterwards
                vae.to(dtype=torch.float32)
                try:
                    return vae.encode(pixels.float()).latent_dist
                finally:
                    vae.to(self.dtype)
            return vae.encode(pixels).latent_dist

    def _latent_statistics(self):
        config = self.pipe.vae.config
        if getattr(config, "latents_mean", None) is None or getattr(config, "latents_std", None) is None:
            return None
        import torch

        return (torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(self.device, self.dtype),
                torch.tensor(config.latents_std).view(1, 4, 1, 1).to(self.device, self.dtype))

    # Adapted from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img.StableDiffusionXLImg2ImgPipeline.prepare_latents (latents_mean / latents_std)
    def initial_latents(self, distribution, generator):
        latents = sample_latent(distribution, generator).to(self.dtype)
        statistics, scale = self._latent_statistics(), self.pipe.vae.config.scaling_factor
        if statistics is None:
            return scale * latents
        mean, std = statistics
        return (latents - mean) * scale / std

    # Adapted from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img.StableDiffusionXLImg2ImgPipeline.__call__ (the final decode, upcast and latents_mean / latents_std)
    def decode(self, latents, conditioning_dtype):
        import torch

        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and self._upcast()
        with torch.no_grad():
            if upcast:
                vae.to(dtype=torch.float32)
                latents = latents.to(torch.float32)
            try:
                statistics, scale = self._latent_statistics(), vae.config.scaling_factor
                if statistics is None:
                    latents = latents / scale
                else:
                    mean, std = (value.to(latents.dtype) for value in statistics)
                    latents = latents * std / scale + mean
                decoded = vae.decode(latents, return_dict=False)[0]
            finally:
                if upcast:
                    vae.to(dtype=torch.float16)
        if getattr(self.pipe, "watermark", None) is not None:
            decoded = self.pipe.watermark.apply_watermark(decoded)
        return decoded, None


class SDXLInpaintConditioning(SDXLConditioning, InpaintConditioning):
    """``StableDiffusionXLInpaintPipeline``: Stable Diffusion's inpainting (the initial latent, the masked source's
    latents after the noise, the latent blend or the extra channels) with SDXL's conditioning and decode, its VAE
    upcast where ``force_upcast`` says so; the source and masked-source latents are scaled only
    (``_encode_vae_image`` reads no ``latents_mean``)."""

    def mask_latents(self, distribution, generator):
        return self.pipe.vae.config.scaling_factor * sample_latent(distribution, generator).to(self.dtype)


class SDXLControlNetConditioning(SDXLConditioning, ControlNetConditioning):
    """``StableDiffusionXLControlNetImg2ImgPipeline``: Stable Diffusion's ControlNet img2img (each sample's control
    image, its scale at each of its steps) with SDXL's conditioning, which the ControlNet receives as well."""


class SDXLControlNetUnionConditioning(UnionControlNetGuidance, SDXLControlNetConditioning):
    """``StableDiffusionXLControlNetUnionImg2ImgPipeline``: SDXL's ControlNet img2img with a union ControlNet
    (ControlNet++): each sample's control images, their modes and ``control_type``."""


class SDXLPAGConditioning(PAGGuidance, SDXLConditioning):
    """``StableDiffusionXLPAGImg2ImgPipeline``: SDXL img2img with :class:`~img2img_lab.models.families.pag.PAGGuidance`
    (the perturbed sample takes the positive prompt's pooled embedding and time ids, as the pipeline's do)."""


class SDXLPAGInpaintConditioning(PAGGuidance, SDXLInpaintConditioning):
    """``StableDiffusionXLPAGInpaintPipeline``: SDXL inpainting with PAG (the perturbed sample carries the cell's mask
    and the positive prompt's pooled embedding and time ids)."""


class SDXLControlNetPAGConditioning(PAGGuidance, SDXLControlNetConditioning):
    """``StableDiffusionXLControlNetPAGImg2ImgPipeline``: SDXL ControlNet img2img with PAG; the ControlNet reads the
    perturbed sample too, with its control image and scale."""

    pooled_guess_mode = False  # its __call__ takes guess mode only as an argument


class SDXLControlNetInpaintConditioning(SDXLConditioning, ControlNetInpaintConditioning):
    """``StableDiffusionXLControlNetInpaintPipeline``: Stable Diffusion's ControlNet inpainting with SDXL's
    conditioning (which the ControlNet receives as well) and SDXL inpainting's masked-source latents."""

    pooled_guess_mode = False  # its __call__ takes guess mode only as an argument

    mask_latents = SDXLInpaintConditioning.mask_latents


class SDXLControlNetUnionInpaintConditioning(UnionControlNetGuidance, SDXLControlNetInpaintConditioning):
    """``StableDiffusionXLControlNetUnionInpaintPipeline``: SDXL's ControlNet inpainting with a union ControlNet."""


def make_tiny_sdxl():
    """A random-weight ``StableDiffusionXLImg2ImgPipeline``: two CLIP encoders (the second with a projection), a
    2-level UNet with text-time embeddings, SDXL base's Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    text_encoder, tokenizer = tiny_clip(32)
    text_encoder_2, tokenizer_2 = tiny_clip(32, projection=True)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=8)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", interpolation_type="linear")
    return StableDiffusionXLImg2ImgPipeline(vae=tiny_vae(4), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                            scheduler=scheduler, requires_aesthetics_score=False,
                                            force_zeros_for_empty_prompt=True)


def _variant(class_name: str, *, controlnet: bool = False):
    import inspect

    import diffusers

    base = make_tiny_sdxl()
    union = unet_union_controlnet if "Union" in class_name else unet_controlnet
    extra = {"controlnet": union(base.unet)} if controlnet else {}
    if "PAG" in class_name:
        extra["pag_applied_layers"] = "mid"
    accepted = inspect.signature(getattr(diffusers, class_name).__init__).parameters  # as the base was configured
    extra.update({name: value for name, value in (("requires_aesthetics_score", False),
                                                  ("force_zeros_for_empty_prompt", True)) if name in accepted})
    return as_class(base, class_name, **extra)


class SDXLFamily(StableDiffusionFamily):
    name, label = "sdxl", "Stable Diffusion XL (also Turbo)"
    pipelines = {
        "img2img": ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLPAGImg2ImgPipeline"),
        "inpaint": ("StableDiffusionXLInpaintPipeline", "StableDiffusionXLPAGInpaintPipeline"),
        "controlnet-img2img": ("StableDiffusionXLControlNetImg2ImgPipeline",
                               "StableDiffusionXLControlNetPAGImg2ImgPipeline",
                               "StableDiffusionXLControlNetUnionImg2ImgPipeline"),
        "controlnet-inpaint": ("StableDiffusionXLControlNetInpaintPipeline",
                               "StableDiffusionXLControlNetUnionInpaintPipeline"),
    }
    text_to_image = {"StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
                     "StableDiffusionXLPAGPipeline": "StableDiffusionXLPAGImg2ImgPipeline",
                     "StableDiffusionXLControlNetPipeline": "StableDiffusionXLControlNetImg2ImgPipeline",
                     "StableDiffusionXLControlNetPAGPipeline": "StableDiffusionXLControlNetPAGImg2ImgPipeline",
                     "StableDiffusionXLControlNetUnionPipeline": "StableDiffusionXLControlNetUnionImg2ImgPipeline"}
    no_strength = {}
    scheduler_configs = ("sdxl", "sdxl-turbo")
    real_size = ("sdxl",)
    tiny_pipelines = {
        "sdxl": make_tiny_sdxl,  # Euler discrete (SDXL base)
        "sdxl-pag": lambda: _variant("StableDiffusionXLPAGImg2ImgPipeline"),
        "sdxl-inpaint": lambda: _variant("StableDiffusionXLInpaintPipeline"),
        "sdxl-pag-inpaint": lambda: _variant("StableDiffusionXLPAGInpaintPipeline"),
        "sdxl-controlnet": lambda: _variant("StableDiffusionXLControlNetImg2ImgPipeline", controlnet=True),
        "sdxl-controlnet-pag": lambda: _variant("StableDiffusionXLControlNetPAGImg2ImgPipeline", controlnet=True),
        "sdxl-controlnet-inpaint": lambda: _variant("StableDiffusionXLControlNetInpaintPipeline", controlnet=True),
        # ControlNet++ (union: a mode per control image)
        "sdxl-controlnet-union": lambda: _variant("StableDiffusionXLControlNetUnionImg2ImgPipeline", controlnet=True),
        "sdxl-controlnet-union-inpaint": lambda: _variant("StableDiffusionXLControlNetUnionInpaintPipeline",
                                                          controlnet=True),
    }
    def batched_conditioning(self) -> tuple[type | None, str]:
        if type(getattr(self.pipe, "controlnet", None)).__name__ == "MultiControlNetUnionModel":
            return None, f"{type(self.pipe).__name__} is run per cell (the batched engine runs one union ControlNet)"
        return super().batched_conditioning()

    batched_classes = {"StableDiffusionXLImg2ImgPipeline": SDXLConditioning,
                       "StableDiffusionXLControlNetImg2ImgPipeline": SDXLControlNetConditioning,
                       "StableDiffusionXLInpaintPipeline": SDXLInpaintConditioning,
                       "StableDiffusionXLControlNetInpaintPipeline": SDXLControlNetInpaintConditioning,
                       "StableDiffusionXLControlNetUnionImg2ImgPipeline": SDXLControlNetUnionConditioning,
                       "StableDiffusionXLControlNetUnionInpaintPipeline": SDXLControlNetUnionInpaintConditioning,
                       "StableDiffusionXLPAGImg2ImgPipeline": SDXLPAGConditioning,
                       "StableDiffusionXLPAGInpaintPipeline": SDXLPAGInpaintConditioning,
                       "StableDiffusionXLControlNetPAGImg2ImgPipeline": SDXLControlNetPAGConditioning}
    side_by_side = ("StableDiffusionXLImg2ImgPipeline",)
