"""Chroma: the FLUX.1 rule (``sigmas = linspace(1, 1/N, N)``, ``mu`` from the token count, packed latents), with a
single T5 encoder and true classifier-free guidance through ``guidance_scale`` and a negative prompt.

>>> ChromaFamily.task_of("ChromaInpaintPipeline"), ChromaFamily.tiny_pipelines["chroma-constant"]().scheduler.config.shift
('inpaint', 1.0)
"""

from __future__ import annotations

from img2img_lab.models.families.flux import TrueCFGFluxFamily, flux_dev_scheduler
from img2img_lab.models.families.tiny_parts import as_class, tiny_t5, tiny_vae


def make_tiny_chroma(*, dynamic: bool = True):
    """A random-weight ``ChromaImg2ImgPipeline``: a T5, a one-layer Chroma transformer; a dynamic-shift scheduler (as
    FLUX.1-dev's) or a constant shift of 1."""
    from diffusers import ChromaImg2ImgPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    text_encoder, tokenizer = tiny_t5(32)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           axes_dims_rope=(4, 4, 8), approximator_hidden_dim=32,
                                           approximator_layers=1, approximator_num_channels=16)
    # lodestones/Chroma1-HD's transformer/config.json carries guidance_embeds: false (the model ignores it, diffusers
    # keeps it in the config: huggingface/diffusers#12112), and ChromaInpaintPipeline.__call__ reads it.
    transformer.register_to_config(guidance_embeds=False)
    scheduler = flux_dev_scheduler() if dynamic else FlowMatchEulerDiscreteScheduler(shift=1.0,
                                                                                     use_dynamic_shifting=False)
    return ChromaImg2ImgPipeline(scheduler=scheduler, vae=tiny_vae(4, flow=True), text_encoder=text_encoder,
                                 tokenizer=tokenizer, transformer=transformer)


class ChromaFamily(TrueCFGFluxFamily):
    """Chroma: the FLUX.1 rule; true classifier-free guidance through ``guidance_scale`` with a negative prompt."""

    name, label = "chroma", "Chroma"
    pipelines = {"img2img": ("ChromaImg2ImgPipeline",), "inpaint": ("ChromaInpaintPipeline",)}
    text_to_image = {"ChromaPipeline": "ChromaImg2ImgPipeline"}
    tiny_pipelines = {
        "chroma-dynamic": make_tiny_chroma,
        "chroma-constant": lambda: make_tiny_chroma(dynamic=False),
        "chroma-inpaint": lambda: as_class(make_tiny_chroma(), "ChromaInpaintPipeline"),
    }
