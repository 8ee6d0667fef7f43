"""Memory controls put on a model's pipeline for a sweep (the settings: :mod:`img2img_lab.plan.memory_settings`):
diffusers' offload, VAE tiling and slicing and attention slicing, each checked against this machine and pipeline
before anything is written.

>>> from img2img_lab.plan.memory_settings import MemoryControls
>>> apply_memory_controls(model, MemoryControls(offload="model"))  # this machine has no accelerator
Traceback (most recent call last):
...
img2img_lab.errors.ModelError: offload: model moves each component to an accelerator only while it runs, and torch sees none here: on the CPU every weight already lives in main memory. Fix: remove offload (or run on a GPU).
"""

from __future__ import annotations

from img2img_lab.errors import ModelError
from img2img_lab.plan.memory_settings import MemoryControls


def apply_memory_controls(model, controls: MemoryControls) -> None:
    """Put ``controls`` on the model's pipeline (each both ways: a control not asked for is turned off), or refuse
    in one line, before anything is written, what this machine or pipeline cannot do."""
    pipe = model.pipe
    _check_offload(pipe, controls.offload)
    vae = getattr(pipe, "vae", None)
    for name, method in (("vae_tiling", "tiling"), ("vae_slicing", "slicing")):
        wanted = getattr(controls, name)
        if wanted and not hasattr(vae, f"enable_{method}"):
            raise ModelError(f"{type(pipe).__name__}'s VAE ({type(vae).__name__}) has no {method}. Fix: remove "
                             f"{name} from the memory settings.")
        if hasattr(vae, f"enable_{method}"):
            getattr(vae, f"{'enable' if wanted else 'disable'}_{method}")()
    denoiser = model.family.denoiser()
    if controls.attention_slicing and not hasattr(denoiser, "set_attention_slice"):
        raise ModelError(f"{type(pipe).__name__}'s {type(denoiser).__name__} cannot slice its attention (a UNet "
                         f"can). Fix: remove attention_slicing from the memory settings.")
    if hasattr(denoiser, "set_attention_slice"):
        pipe.enable_attention_slicing() if controls.attention_slicing else pipe.disable_attention_slicing()
    if controls.offload != model.offload:
        if model.offload != "none":
            raise ModelError(f"the model was offloaded ({model.offload}) by an earlier sweep and diffusers' hooks stay "
                             f"on it. Fix: load the model again to sweep with offload: {controls.offload}.")
        getattr(pipe, f"enable_{controls.offload}_cpu_offload")()
        model.offload = controls.offload


def _check_offload(pipe, offload: str) -> None:
    if offload == "none":
        return
    import importlib.util

    import torch

    if importlib.util.find_spec("accelerate") is None:
        raise ModelError(f"offload: {offload} needs the accelerate package, which is not installed. Fix: pip install "
                         f"accelerate (or remove offload).")
    accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    if not accelerator:
        raise ModelError(f"offload: {offload} moves each component to an accelerator only while it runs, and torch "
                         f"sees none here: on the CPU every weight already lives in main memory. Fix: remove "
                         f"offload (or run on a GPU).")


def decodes_beside_denoising(model) -> bool:
    """Whether a sweep may decode one chunk on its writer thread while the next one denoises: no offload hook moves
    modules between devices as they run (diffusers' or accelerate's, put on by a memory control or by the caller),
    and the VAE is never cast to float32 for a pass and back. That last is judged by the VAE alone, erring on the safe
    side: a VAE below float32 whose config sets ``force_upcast`` decodes in turn (a zero-step cell's round trip casts
    a float16 one, SDXL's encoding a bfloat16 one too; FLUX.1's bfloat16 VAE, which no pipeline casts, is held back
    with them).

    >>> decodes_beside_denoising(model)
    True
    """
    import torch

    if model.offload != "none":
        return False
    modules = [module for module in model.pipe.components.values() if isinstance(module, torch.nn.Module)]
    if any(getattr(part, "_hf_hook", None) is not None or getattr(part, "_diffusers_hook", None) is not None
           for module in modules for part in module.modules()):
        return False
    vae = getattr(model.pipe, "vae", None)
    return vae is None or vae.dtype == torch.float32 or not bool(getattr(vae.config, "force_upcast", False))
