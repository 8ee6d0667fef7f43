"""Tiny random-weight pipelines of the image-conditioned families beyond plain img2img, built offline.

Like :mod:`img2img_lab.testing.tiny_families` (whose components they reuse), each is the family's real diffusers class, so
tests run its own ``__call__``: Chroma img2img (both scheduler styles), ControlNet img2img (SD, SDXL, FLUX.1),
inpainting (SD with a 4- and a 9-channel UNet, SDXL, SD3, FLUX.1) and, to test the refusal, FLUX.1 Kontext.

=====================  ================================================  =========================================
name                   diffusers class                                   notes
=====================  ================================================  =========================================
``chroma-dynamic``     ChromaImg2ImgPipeline                             flow matching, dynamic shifting
``chroma-constant``    ChromaImg2ImgPipeline                             flow matching, constant shift 1
``sd-controlnet``      StableDiffusionControlNetImg2ImgPipeline          PNDM, a tiny ControlNet
``sdxl-controlnet``    StableDiffusionXLControlNetImg2ImgPipeline        Euler, a tiny ControlNet
``flux-controlnet``    FluxControlNetImg2ImgPipeline                     FLUX.1-dev scheduler, FluxControlNetModel
``sd-inpaint``         StableDiffusionInpaintPipeline                    4-channel UNet (latent blend)
``sd-inpaint-9``       StableDiffusionInpaintPipeline                    9-channel UNet (masked-image channels)
``sdxl-inpaint``       StableDiffusionXLInpaintPipeline                  4-channel UNet
``sd3-inpaint``        StableDiffusion3InpaintPipeline                   16-channel transformer (latent blend)
``flux-inpaint``       FluxInpaintPipeline                               FLUX.1-dev scheduler
``flux-kontext``       FluxKontextPipeline                               no strength: refused
=====================  ================================================  =========================================

>>> type(make_tiny_conditioned("sd-inpaint-9")).__name__, make_tiny_conditioned("sd-inpaint-9").unet.config.in_channels
('StableDiffusionInpaintPipeline', 9)
"""

from __future__ import annotations

from img2img_lab.testing.tiny_families import make_tiny_family, tiny_t5, tiny_vae

TINY_CONDITIONED = ("chroma-dynamic", "chroma-constant", "sd-controlnet", "sdxl-controlnet", "flux-controlnet",
                    "sd-inpaint", "sd-inpaint-9", "sdxl-inpaint", "sd3-inpaint", "flux-inpaint", "flux-kontext")


def _chroma(*, dynamic: bool):
    from diffusers import ChromaImg2ImgPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    text_encoder, tokenizer = tiny_t5(32)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           axes_dims_rope=(4, 4, 8), approximator_hidden_dim=32,
                                           approximator_layers=1, approximator_num_channels=16)
    if dynamic:
        scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                    max_shift=1.15, shift=3.0, use_dynamic_shifting=True)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return ChromaImg2ImgPipeline(scheduler=scheduler, vae=tiny_vae(4, flow=True), text_encoder=text_encoder,
                                 tokenizer=tokenizer, transformer=transformer)


def _unet(in_channels: int, *, cross: int = 32):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross,
                                norm_num_groups=8, attention_head_dim=4)


def _unzeroed(controlnet):
    """A ControlNet whose zero-initialised output layers get random weights (a trained one's are not zero): otherwise
    the control image would change nothing and a test could not tell whether it was passed."""
    import torch

    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_blocks",
                                "controlnet_single_blocks", "controlnet_x_embedder")):
                parameter.normal_(0.0, 0.2)
    return controlnet


def _sd_controlnet():
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    base = make_tiny_family("sd1")
    controlnet = _unzeroed(ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(8, 16)))
    return StableDiffusionControlNetImg2ImgPipeline(**base.components, controlnet=controlnet)


def _sdxl_controlnet():
    from diffusers import ControlNetModel, StableDiffusionXLControlNetImg2ImgPipeline

    base = make_tiny_family("sdxl")
    controlnet = _unzeroed(ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(8, 16)))
    components = {name: value for name, value in base.components.items() if name in (
        "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")}
    return StableDiffusionXLControlNetImg2ImgPipeline(**components, controlnet=controlnet,
                                                      requires_aesthetics_score=False,
                                                      force_zeros_for_empty_prompt=True)


def _flux_controlnet():
    from diffusers import FluxControlNetImg2ImgPipeline, FluxControlNetModel

    base = make_tiny_family("flux-dev")
    controlnet = _unzeroed(FluxControlNetModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                     pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True))
    components = {name: value for name, value in base.components.items() if name not in ("image_encoder",
                                                                                           "feature_extractor")}
    return FluxControlNetImg2ImgPipeline(**components, controlnet=controlnet)


def _sd_inpaint(channels: int):
    from diffusers import StableDiffusionInpaintPipeline

    base = make_tiny_family("sd1")
    components = dict(base.components)
    if channels == 9:
        components["unet"] = _unet(9)
    return StableDiffusionInpaintPipeline(**components)


def _sd3_inpaint():
    from diffusers import SD3Transformer2DModel, StableDiffusion3InpaintPipeline

    base = make_tiny_family("sd3")  # its text encoders; SD3 inpainting needs 16 latent channels (as SD3's VAE has)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=16)
    components = {name: value for name, value in base.components.items() if name not in ("image_encoder",
                                                                                           "feature_extractor")}
    return StableDiffusion3InpaintPipeline(**{**components, "transformer": transformer, "vae": tiny_vae(16, flow=True)})


def _from(family: str, class_name: str, **extra):
    import diffusers

    base = make_tiny_family(family)
    cls = getattr(diffusers, class_name)
    names = set(cls._get_signature_keys(cls)[0]) | set(cls._get_signature_keys(cls)[1])
    components = {name: value for name, value in base.components.items() if name in names}
    return cls(**components, **extra)


def make_tiny_conditioned(name: str, *, seed: int = 0):
    """A random-weight pipeline ``name`` (one of :data:`TINY_CONDITIONED`), CPU, fp32, progress bar off."""
    import torch

    if name not in TINY_CONDITIONED:
        raise ValueError(f"unknown tiny pipeline {name!r}; use one of {', '.join(TINY_CONDITIONED)}")
    torch.manual_seed(seed)
    builders = {
        "chroma-dynamic": lambda: _chroma(dynamic=True), "chroma-constant": lambda: _chroma(dynamic=False),
        "sd-controlnet": _sd_controlnet, "sdxl-controlnet": _sdxl_controlnet, "flux-controlnet": _flux_controlnet,
        "sd-inpaint": lambda: _sd_inpaint(4), "sd-inpaint-9": lambda: _sd_inpaint(9),
        "sdxl-inpaint": lambda: _from("sdxl", "StableDiffusionXLInpaintPipeline", requires_aesthetics_score=False,
                                      force_zeros_for_empty_prompt=True),
        "sd3-inpaint": _sd3_inpaint,
        "flux-inpaint": lambda: _from("flux-dev", "FluxInpaintPipeline"),
        "flux-kontext": lambda: _from("flux-dev", "FluxKontextPipeline"),
    }
    pipe = builders[name]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_conditioned(name: str, folder, *, seed: int = 0):
    """Build :func:`make_tiny_conditioned` and ``save_pretrained`` it to ``folder``; return the folder."""
    from pathlib import Path

    folder = Path(folder)
    make_tiny_conditioned(name, seed=seed).save_pretrained(folder)
    return folder
