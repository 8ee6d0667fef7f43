"""Latent Consistency Models: the strength enters ``LCMScheduler.set_timesteps`` itself (LCM shortens its own
schedule, no ``get_timesteps``); guidance is a UNet embedding (``time_cond_proj_dim``), never classifier-free, so the
negative prompt is swallowed.

>>> from img2img_lab.models.handle import as_model
>>> as_model(LCMFamily.tiny_pipelines["lcm"]()).family.name
'lcm'
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family
from img2img_lab.models.families.stable_diffusion import TextConditioning
from img2img_lab.models.families.tiny_parts import tiny_clip, tiny_unet, tiny_vae


class LCMConditioning(TextConditioning):
    """What the batched loop needs of ``LatentConsistencyModelImg2ImgPipeline``: Stable Diffusion's text, latents and
    decode; each strength on its own shortened schedule (``set_timesteps(..., strength=s)``), the strengths stepping
    in lockstep with each sample at its own timestep; the guidance as a per-sample embedding (``timestep_cond`` from
    ``w = guidance - 1``), never classifier-free. LCM's last step returns its denoised sample, which is decoded.

    >>> lcm = LCMFamily.tiny_pipelines["lcm"]()
    >>> LCMFamily(lcm).batched_conditioning()[1]
    'LatentConsistencyModelImg2ImgPipeline'
    """

    per_sample_timesteps = True

    def uses_cfg(self, cell) -> bool:
        return False

    # Adapted from diffusers.pipelines.latent_consistency_models.pipeline_latent_consistency_img2img.LatentConsistencyModelImg2ImgPipeline.__call__ (step 6: the guidance scale embedding)
    def sample_fields(self, cell) -> dict:
        import torch

        w = torch.tensor(cell.guidance_scale - 1).repeat(1)
        embedding = self.pipe.get_guidance_scale_embedding(w, embedding_dim=self.pipe.unet.config.time_cond_proj_dim)
        return {"timestep_cond": embedding.to(device=self.device, dtype=self.dtype)}

    # Adapted from diffusers.pipelines.latent_consistency_models.pipeline_latent_consistency_img2img.LatentConsistencyModelImg2ImgPipeline.__call__ (step 8: the UNet call)
    def predict(self, inputs, t, fields: dict):
        return self.pipe.unet(inputs, fields["timestep"], timestep_cond=fields["timestep_cond"],
                              encoder_hidden_states=fields["encoder_hidden_states"], return_dict=False)[0]


def make_tiny_lcm():
    """A random-weight ``LatentConsistencyModelImg2ImgPipeline`` with a guidance-embedding UNet and LCM's scheduler
    (50 original steps)."""
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LCMScheduler

    text_encoder, tokenizer = tiny_clip(32)
    unet = tiny_unet(time_cond_proj_dim=32)
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             original_inference_steps=50, set_alpha_to_one=True, timestep_spacing="leading")
    return LatentConsistencyModelImg2ImgPipeline(vae=tiny_vae(4), text_encoder=text_encoder, tokenizer=tokenizer,
                                                 unet=unet, scheduler=scheduler, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)


class LCMFamily(Family):
    name, label = "lcm", "Latent Consistency Model"
    pipelines = {"img2img": ("LatentConsistencyModelImg2ImgPipeline",)}
    text_to_image = {"LatentConsistencyModelPipeline": "LatentConsistencyModelImg2ImgPipeline"}
    tiny_pipelines = {"lcm": make_tiny_lcm}
    applies_get_timesteps = False
    schedulers = ("default", "lcm")
    batched_classes = {"LatentConsistencyModelImg2ImgPipeline": LCMConditioning}

    def guidance_used(self, guidance_scale: float) -> bool:
        return getattr(self.pipe.unet.config, "time_cond_proj_dim", None) is not None

    def ignored_arguments(self) -> dict[str, str]:
        return {"negative_prompt": "LatentConsistencyModelImg2ImgPipeline swallows negative_prompt (**kwargs); "
                                   "LCM never runs classifier-free guidance"}

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        return {"strength": strength}
