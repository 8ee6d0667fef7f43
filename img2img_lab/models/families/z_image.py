"""Z-Image: the FLUX.1 rule with float32 ``torch.linspace`` sigmas and ``mu`` always passed
(``get_default_z_image_sigmas``), a Qwen3 text encoder read through its chat template, and true classifier-free
guidance through ``guidance_scale``.

>>> from img2img_lab.models.handle import as_model
>>> as_model(ZImageFamily.tiny_pipelines["zimage"]()).step_plan("default", 4, 0.5, width=32, height=32).executed_steps
2
"""

from __future__ import annotations

from img2img_lab.models.families.flux import TrueCFGFluxFamily
from img2img_lab.models.families.tiny_parts import as_class, qwen2_tokenizer, tiny_vae


def make_tiny_zimage():
    """A random-weight ``ZImageImg2ImgPipeline``: a 2-layer Qwen3 encoder with a byte-level chat tokenizer, a
    one-layer transformer, Z-Image-Turbo's scheduler (flow matching, constant shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageImg2ImgPipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = qwen2_tokenizer()
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16,
                                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                          head_dim=8, max_position_embeddings=1024))
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32,
                                           n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
                                           axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImageImg2ImgPipeline(scheduler=scheduler, vae=tiny_vae(4, flow=True), text_encoder=text_encoder,
                                 tokenizer=tokenizer, transformer=transformer)


class ZImageFamily(TrueCFGFluxFamily):
    """Z-Image: float32 ``torch.linspace`` sigmas and ``mu`` always passed (``get_default_z_image_sigmas``)."""

    name, label = "z-image", "Z-Image"
    pipelines = {"img2img": ("ZImageImg2ImgPipeline",), "inpaint": ("ZImageInpaintPipeline",)}
    text_to_image = {"ZImagePipeline": "ZImageImg2ImgPipeline"}
    tiny_pipelines = {
        "zimage": make_tiny_zimage,
        "zimage-inpaint": lambda: as_class(make_tiny_zimage(), "ZImageInpaintPipeline"),
    }

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        import torch

        arguments = super().timestep_arguments(scheduler, num_inference_steps, strength, width, height)
        arguments["sigmas"] = torch.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()
        return arguments
