"""Tiny random-weight pipelines of the real diffusers classes, built offline from configs alone, for tests and
benchmarks (never a model): the public face of the ``tiny_pipelines`` every family module declares
(:mod:`img2img_lab.models.families`), so tests exercise each family's own ``__call__``, timestep preparation and size
rules in milliseconds.

:data:`TINY_FAMILIES` names them all (``sd1``, ``sdxl``, ``sd3``, ``flux-dev``, ``qwenimage``, ``zimage``, ``lcm``,
the inpainting, PAG and ControlNet variants...); :func:`make_tiny_family` builds one (:func:`make_tiny_variant` also
the variants tests and benchmarks add), :func:`save_tiny_family` saves it as a diffusers folder.
:func:`make_tiny_pipeline` is Stable Diffusion's builder with every size a parameter (:func:`make_sd15_sized_pipeline`:
SD 1.5's architecture for benchmarks).

>>> type(make_tiny_family("flux-dev")).__name__
'FluxImg2ImgPipeline'
>>> sorted(path.name for path in save_tiny_pipeline("tiny-sd").iterdir())
['model_index.json', 'scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae']
"""

from __future__ import annotations

from pathlib import Path

from img2img_lab.models.families.architectures import build_architecture
from img2img_lab.models.families.tiny_parts import make_tiny_pipeline  # noqa: F401
from img2img_lab.models.registry import REAL_SIZE, TINY_PIPELINES, tiny_pipeline

#: Every tiny pipeline the family modules declare, by name.
TINY_FAMILIES: tuple[str, ...] = tuple(TINY_PIPELINES)
#: Every real-size architecture the family modules declare, by name.
REAL_SIZE_ARCHITECTURES: tuple[str, ...] = tuple(REAL_SIZE)


def make_sd15_sized_pipeline(*, tiny: bool = False, seed: int = 0):
    """A random-weight pipeline with Stable Diffusion 1.5's architecture: UNet 320/640/1280/1280 (2 layers per
    block, 8 attention heads, cross-attention 768), SD VAE 128/256/512/512, a CLIP-L-sized text encoder (768 wide,
    12 layers, 12 heads, 77 tokens), 512 px. Speed does not depend on weight values, so this is the benchmark
    stand-in for SD 1.5 offline. ``tiny=True`` keeps the structure (4 levels, 2 layers per block) at toy widths and
    64 px, so the same code path runs in seconds on a CPU (tests).

    >>> make_sd15_sized_pipeline(tiny=True).unet.config.block_out_channels
    (32, 32, 64, 64)
    """
    if tiny:
        return make_tiny_pipeline(seed=seed, sample_size=64, unet_channels=(32, 32, 64, 64),
                                  vae_channels=(16, 16, 32, 32), text_hidden=32, cross_attention_dim=32,
                                  max_length=77, layers_per_block=2, text_layers=2, attention_head_dim=4)
    return make_tiny_pipeline(seed=seed, sample_size=512, unet_channels=(320, 640, 1280, 1280),
                              vae_channels=(128, 256, 512, 512), text_hidden=768, cross_attention_dim=768,
                              max_length=77, layers_per_block=2, text_layers=12, text_heads=12, attention_head_dim=8)


def make_tiny_family(name: str, *, seed: int = 0):
    """A random-weight pipeline ``name`` (one of :data:`TINY_FAMILIES`), CPU, fp32, progress bar off.

    >>> type(make_tiny_family("sd3")).__name__
    'StableDiffusion3Img2ImgPipeline'
    """
    return tiny_pipeline(name, seed=seed)


def make_tiny_variant(name: str, *, seed: int = 0):
    """:func:`make_tiny_family`, or a variant of one that no family declares on its own: ``…-pooled`` (its
    ControlNet pools its residuals, shuffle-style: guess mode), ``…-multi`` (two ControlNets, a control image each;
    FLUX.1's too), ``flux-controlnet[-inpaint]-xlabs`` (an XLabs-style FLUX.1 ControlNet), ``flux-controlnet-union``
    (a union FLUX.1 ControlNet, 4 modes) and ``flux-controlnet-union-list`` (it alone in a ``FluxMultiControlNetModel``,
    diffusers' way to give it several maps), ``sd-controlnet-inpaint-9``
    and ``sd-pag-inpaint-9`` (SD's ControlNet and PAG inpainting with a 9-channel UNet), ``sd3-inpaint-33`` (SD3
    inpainting with a 33-channel transformer: the mask and the masked source as channels). Seeded, in evaluation mode.

    >>> type(make_tiny_variant("sd-controlnet-multi").controlnet).__name__
    'MultiControlNetModel'
    """
    import torch

    from img2img_lab.models.families.sd3 import make_tiny_sd3_inpaint
    from diffusers import FluxMultiControlNetModel

    from img2img_lab.models.families.tiny_parts import (as_class, for_inference, make_tiny_flux,
                                                        make_tiny_flux_xlabs, sd_variant, tiny_flux_controlnet,
                                                        with_pooled_controlnet, with_two_controlnets,
                                                        with_two_flux_controlnets)

    if name.endswith("-pooled"):
        return for_inference(with_pooled_controlnet(make_tiny_variant(name.removesuffix("-pooled"), seed=seed)))
    if name.endswith("-multi"):
        several = with_two_flux_controlnets if name.startswith("flux") else with_two_controlnets
        return for_inference(several(make_tiny_variant(name.removesuffix("-multi"), seed=seed)))
    builders = {
        "flux-controlnet-xlabs": lambda: make_tiny_flux_xlabs("FluxControlNetImg2ImgPipeline"),
        "flux-controlnet-inpaint-xlabs": lambda: make_tiny_flux_xlabs("FluxControlNetInpaintPipeline"),
        "flux-controlnet-union": lambda: as_class(make_tiny_flux(), "FluxControlNetImg2ImgPipeline",
                                                  controlnet=tiny_flux_controlnet(modes=4)),
        "flux-controlnet-union-list": lambda: as_class(
            make_tiny_flux(), "FluxControlNetImg2ImgPipeline",
            controlnet=FluxMultiControlNetModel([tiny_flux_controlnet(modes=4)])),
        "sd-controlnet-inpaint-9": lambda: sd_variant("StableDiffusionControlNetInpaintPipeline", controlnet=True,
                                                      unet_channels=9),
        "sd-pag-inpaint-9": lambda: sd_variant("StableDiffusionPAGInpaintPipeline", unet_channels=9),
        "sd3-inpaint-33": lambda: make_tiny_sd3_inpaint(transformer_channels=33)}
    if name not in builders:
        return make_tiny_family(name, seed=seed)
    torch.manual_seed(seed)
    return for_inference(builders[name]())


def save_tiny_family(name: str, folder, *, seed: int = 0) -> Path:
    """Build :func:`make_tiny_family` and ``save_pretrained`` it to ``folder``; return the folder.

    >>> import json
    >>> json.loads((save_tiny_family("lcm", "tiny-lcm") / "scheduler/scheduler_config.json").read_text())["_class_name"]
    'LCMScheduler'
    """
    folder = Path(folder)
    make_tiny_family(name, seed=seed).save_pretrained(folder)
    return folder


def make_real_size_pipeline(name: str, *, seed: int = 0, dtype=None, device: str | None = None):
    """A random-weight pipeline of the real-size architecture ``name`` (one of :data:`REAL_SIZE_ARCHITECTURES`,
    :mod:`img2img_lab.models.families.architectures`): for speed and memory, never as a model. ``dtype``/``device``
    cast it after it is built in float32 on the CPU."""
    if name not in REAL_SIZE:
        raise ValueError(f"unknown architecture {name!r}; use one of {', '.join(REAL_SIZE)}")
    import torch

    pipe = build_architecture(name, seed=seed)
    if dtype not in (None, torch.float32) or device not in (None, "cpu"):
        pipe = pipe.to(device=device, dtype=dtype)
    return pipe


def save_tiny_pipeline(folder, **sizes) -> Path:
    """Build :func:`make_tiny_pipeline` (``sizes``: its parameters) and ``save_pretrained`` it to ``folder``."""
    folder = Path(folder)
    make_tiny_pipeline(**sizes).save_pretrained(folder)
    return folder
