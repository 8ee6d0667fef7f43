"""What the batched runner needs of each family it batches, done as that pipeline's ``__call__`` does it.

:data:`CONDITIONING` maps a pipeline class name to its adapter: :class:`TextConditioning` (Stable Diffusion
1.x/2.x) and :class:`SDXLConditioning` (SDXL and Turbo). An adapter encodes a prompt pair into the tensors each UNet
sample carries, turns a source's VAE distribution into the scaled initial latent (``prepare_latents``) and decodes
final latents into images (and NSFW flags); :mod:`img2img_lab.engine.batched` owns the loop.

>>> sorted(CONDITIONING)
['StableDiffusionImg2ImgPipeline', 'StableDiffusionXLImg2ImgPipeline']
"""

from __future__ import annotations



# Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.retrieve_latents
def _sample_latent(distribution, generator):
    """Exactly ``retrieve_latents(encoder_output, generator)``: mean + std * randn(generator)."""
    from diffusers.utils.torch_utils import randn_tensor

    sample = randn_tensor(distribution.mean.shape, generator=generator, device=distribution.parameters.device,
                          dtype=distribution.parameters.dtype)
    return distribution.mean + distribution.std * sample


class TextConditioning:
    """Stable Diffusion 1.x/2.x: what the batched loop needs of a family, as the pipeline's ``__call__`` does it.

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

    def __init__(self, pipe, device, dtype):
        self.pipe, self.device, self.dtype = pipe, device, dtype

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
        import torch

        pixels = self.pipe.image_processor.preprocess(source).to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            return self.pipe.vae.encode(pixels).latent_dist

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.prepare_latents
    def initial_latents(self, distribution, generator):
        return self.pipe.vae.config.scaling_factor * _sample_latent(distribution, generator)

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.__call__ (step 9: decode, safety checker)
    def decode(self, latents, conditioning_dtype):
        import torch

        with torch.no_grad():
            decoded = self.pipe.vae.decode(latents / self.pipe.vae.config.scaling_factor, return_dict=False)[0]
            return self.pipe.run_safety_checker(decoded, self.device, conditioning_dtype)


class SDXLConditioning(TextConditioning):
    """SDXL (and Turbo): two text encoders, a pooled embedding and added time ids per sample; the VAE runs in
    float32 where ``force_upcast`` says so; latents may be normalised by ``latents_mean``/``latents_std``.

    >>> from img2img_lab.testing.tiny_families import make_tiny_family
    >>> sdxl = make_tiny_family("sdxl")
    >>> pair = SDXLConditioning(sdxl, sdxl.device, sdxl.unet.dtype).encode([("a red square", "")], (64, 64))
    >>> sorted(pair[("a red square", "")]["positive"]) == ["encoder_hidden_states", "text_embeds", "time_ids"]
    True
    """

    added_fields = ("text_embeds", "time_ids")

    # Adapted from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img.StableDiffusionXLImg2ImgPipeline.__call__ (steps 3 and 8: encode_prompt, _get_add_time_ids)
    def encode(self, keys, size) -> dict:
        import inspect

        import torch

        defaults = {name: parameter.default
                    for name, parameter in inspect.signature(type(self.pipe).__call__).parameters.items()}
        width, height = size
        text_projection = (self.pipe.text_encoder_2.config.projection_dim if self.pipe.text_encoder_2 is not None
                           else None)
        conditioning = {}
        with torch.no_grad():
            for prompt, negative in keys:
                positive, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
                    prompt=prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                    negative_prompt=negative or None)
                time_ids, negative_time_ids = self.pipe._get_add_time_ids(
                    (height, width), defaults["crops_coords_top_left"], (height, width), defaults["aesthetic_score"],
                    defaults["negative_aesthetic_score"], (height, width), defaults["negative_crops_coords_top_left"],
                    (height, width), dtype=positive.dtype,
                    text_encoder_projection_dim=text_projection or int(pooled.shape[-1]))
                conditioning[(prompt, negative)] = {
                    "positive": {"encoder_hidden_states": positive, "text_embeds": pooled,
                                 "time_ids": time_ids.to(self.device)},
                    "negative": {"encoder_hidden_states": negative_embeds, "text_embeds": negative_pooled,
                                 "time_ids": negative_time_ids.to(self.device)}}
        return conditioning

    def _upcast(self) -> bool:
        """Whether the VAE must run in float32 (``force_upcast``) while the model runs in a lower precision."""
        import torch

        return bool(self.pipe.vae.config.force_upcast) and self.dtype != torch.float32

    # Adapted from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img.StableDiffusionXLImg2ImgPipeline.prepare_latents (the VAE's force_upcast)
    def encode_source(self, source):
        import torch

        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(source).to(device=self.device, dtype=self.dtype)
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
        latents = _sample_latent(distribution, generator).to(self.dtype)
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


#: Pipeline class name -> its batched conditioning.
CONDITIONING = {"StableDiffusionImg2ImgPipeline": TextConditioning,
                 "StableDiffusionXLImg2ImgPipeline": SDXLConditioning}
