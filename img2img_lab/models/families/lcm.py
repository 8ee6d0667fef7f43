"""Latent Consistency Models: the strength enters ``LCMScheduler.set_timesteps`` itself (LCM shortens its own
schedule, no ``get_timesteps``); guidance is a UNet embedding (``time_cond_proj_dim``), never classifier-free, so the
negative prompt is swallowed.

>>> from img2img_lab.models.handle import as_model
>>> as_model(LCMFamily.tiny_pipelines["lcm"]()).family.name
'lcm'
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family
from img2img_lab.models.families.tiny_parts import tiny_clip, tiny_unet, tiny_vae


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

    def guidance_used(self, guidance_scale: float) -> bool:
        return getattr(self.pipe.unet.config, "time_cond_proj_dim", None) is not None

    def ignored_arguments(self) -> dict[str, str]:
        return {"negative_prompt": "LatentConsistencyModelImg2ImgPipeline swallows negative_prompt (**kwargs); "
                                   "LCM never runs classifier-free guidance"}

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        return {"strength": strength}

    def batched_conditioning(self) -> tuple[type | None, str]:
        return None, ("LCM's strength rescales its own schedule, so cells of different strengths share few timesteps "
                      "(at 4 steps, 9 strengths run 36 evaluations at 23 timesteps): run per cell")
