"""Flow-matching inpainting in the batched engine: the latents, the masked source's draw and the latent blend that
FLUX.1's inpainting pipeline runs and Chroma's, Qwen-Image's, Z-Image's and SD3's run too (each family packs its
latents its own way).

>>> from img2img_lab.models.families.sd3 import SD3Family
>>> SD3Family(SD3Family.tiny_pipelines["sd3-inpaint"]()).batched_conditioning()[1]
'StableDiffusion3InpaintPipeline'
"""

from __future__ import annotations

from img2img_lab.models.families.base import masked_source


class FlowInpaint:
    """A flow-matching inpainting pipeline's latents and blend, mixed into a family's conditioning (written before
    it): img2img with the latent blend after every step (the source scale-noised to the next timestep outside the
    mask), and the masked source's latents drawn with the cell's generator after the noise, as
    ``prepare_mask_latents`` draws them (a 16-channel transformer never reads them). ``FluxInpaintPipeline``'s
    algorithm, which Chroma's, Qwen-Image's and Z-Image's inpainting pipelines copy, and SD3's runs too; latents
    packed as the family packs them (its ``_pack``)."""

    def __init__(self, pipe, device, dtype, *, size=None):
        super().__init__(pipe, device, dtype, size=size)
        self._masks: dict[tuple, tuple] = {}

    def _mask_channels(self) -> int:
        """The channels the mask is repeated over before packing (FLUX.1's latent channels)."""
        return self.pipe.transformer.config.in_channels // 4

    def masked_distribution(self, masked):
        """The VAE's distribution of the masked source (the pipeline samples it with the cell's generator)."""
        return self.pipe.vae.encode(masked).latent_dist

    # Adapted from diffusers.pipelines.flux.pipeline_flux_inpaint.FluxInpaintPipeline.prepare_mask_latents (the packed mask; the masked source's VAE distribution)
    def _mask_inputs(self, source, mask_image):
        import torch

        key = (id(source), id(mask_image))
        if key not in self._masks:
            condition, masked = masked_source(self.pipe, source, mask_image, self.size)
            side = (self._latent_side(self.size[1]), self._latent_side(self.size[0]))
            mask = torch.nn.functional.interpolate(condition, size=side).to(device=self.device, dtype=self.dtype)
            channels = self._mask_channels()
            masked = masked.to(device=self.device, dtype=self.dtype)
            with torch.no_grad():
                self._masks[key] = (self._pack(mask.repeat(1, channels, 1, 1)), self.masked_distribution(masked))
        return self._masks[key]

    # Adapted from diffusers.pipelines.flux.pipeline_flux_inpaint.FluxInpaintPipeline.prepare_latents
    def start_latents(self, scheduler, timesteps, distribution, generator, *, cell, condition, source):
        from diffusers.utils.torch_utils import randn_tensor

        initial = self.initial_latents(distribution, generator)
        noise = randn_tensor(initial.shape, generator=generator, device=self.device, dtype=self.dtype)
        latents = self._pack(scheduler.scale_noise(initial, timesteps[:1], noise))
        mask, masked_distribution = self._mask_inputs(source, condition["mask_image"])
        self.initial_latents(masked_distribution, generator)  # drawn as the pipeline draws it, then unused
        return latents, {}, {"image_latents": self._pack(initial), "noise": self._pack(noise), "mask": mask}

    # Adapted from diffusers.pipelines.flux.pipeline_flux_inpaint.FluxInpaintPipeline.__call__ (the latent blend)
    def after_step(self, scheduler, timesteps, step: int, latents, state: dict):
        import torch

        proper = state["image_latents"]
        if step < len(timesteps) - 1:
            proper = scheduler.scale_noise(proper, torch.tensor([timesteps[step + 1]]), state["noise"])
        return (1 - state["mask"]) * proper + state["mask"] * latents
