"""How many samples one denoiser call of the batched engine takes: the device's fixed cap, or the largest batch under
a memory budget, measured.

With a budget (:class:`~img2img_lab.plan.memory_settings.MemoryControls` ``memory_budget``: bytes, or ``auto`` — 90%
of CUDA's free memory, half of the CPU's available memory), :func:`fit_batch_limit` measures what one sample adds
at its peak — a denoiser call on one latent of the sources' size, and the VAE decoding one image (the engine decodes
``limit // 2`` images at a time) — on CUDA from the allocator's peak, on the CPU from the resident memory (freed heap
returned to the system first, so earlier work does not hide it). On a CPU the rise of one sample includes buffers a
larger batch shares (SD 1.5 at 256 px: 203 MB for one sample, 393 MB for eight), so the limit is conservative. A
budget below one sample's footprint is refused, naming both. CUDA's out-of-memory halving stays the last resort.

>>> limits = fit_batch_limit(model, source, 10**12)  # the embedded model: a terabyte fits any batch
>>> limits["limit"] == DEFAULT_MAX_BATCH["cpu"] * 8, limits["sample_footprint"] >= 0
(True, True)
"""

from __future__ import annotations

from types import SimpleNamespace

from img2img_lab._utils.memory import PeakMemory, available_bytes
from img2img_lab.errors import PlanError
from img2img_lab.models.handle import ModelHandle

#: Default UNet samples per call without a budget (a cell with guidance > 1 is two samples).
DEFAULT_MAX_BATCH = {"cuda": 32, "cpu": 16, "mps": 8}
#: The most samples a budget may give one call (far beyond what speeds anything up).
MAX_FITTED_BATCH_FACTOR = 8


def budget_bytes(budget, device: str) -> int:
    """A budget in bytes: as given, or ``auto``: 90% of CUDA's free memory, half of the CPU's available memory."""
    if budget != "auto":
        return int(budget)
    share = 0.9 if str(device).startswith("cuda") else 0.5
    return int(available_bytes(device) * share)


def _trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc), so a resident-memory rise measures new memory."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def sample_footprints(model: ModelHandle, source) -> tuple[int, int]:
    """``(denoiser, decoder)``: the peak memory one sample adds to a denoiser call, and one image to a VAE decode, at
    ``source``'s size (see the module doc)."""
    import torch

    conditioning, _ = model.family.batched_conditioning()
    device = model.pipe._execution_device
    conditioner = conditioning(model.pipe, device, model.family.denoiser().dtype, size=source.size)
    sample = conditioner.encode([("", "")], source.size)[("", "")]["positive"]
    latents = conditioner.blank_latents(source.size)
    fields = {name: value[:1] for name, value in sample.items()}
    fields.update(conditioner.sample_fields(SimpleNamespace(guidance_scale=model.family.default_guidance() or 1.0)))
    fields.update(conditioner.probe_fields(source.size))
    with torch.no_grad():
        _trim_heap()
        with PeakMemory(str(device)) as denoiser:
            conditioner.predict(latents, torch.tensor(500.0, device=device), fields)
        _trim_heap()
        with PeakMemory(str(device)) as decoder:
            conditioner.decode(latents, sample["encoder_hidden_states"].dtype)
    return max(denoiser.rise, 1), max(decoder.rise, 1)


def fit_batch_limit(model: ModelHandle, source, budget) -> dict:
    """The largest denoiser batch whose measured footprint, and whose decode of half as many images, stay under
    ``budget`` (bytes or ``auto``); ``{"limit", "budget", "sample_footprint", "decode_footprint"}``. Raises
    :class:`PlanError` (one line) where one sample does not fit."""
    device = str(model.pipe._execution_device)
    budget = budget_bytes(budget, device)
    sample, decode = sample_footprints(model, source)
    if max(sample, decode) > budget:
        raise PlanError(f"memory_budget {budget / 1e6:.0f} MB is below one sample's footprint ({sample / 1e6:.0f} MB "
                        f"in the denoiser, {decode / 1e6:.0f} MB to decode one image, measured at {source.width}x"
                        f"{source.height}). Fix: give at least {max(sample, decode) / 1e6:.0f}MB, or turn on "
                        f"vae_tiling / attention_slicing.")
    cap = DEFAULT_MAX_BATCH.get(device.split(":")[0], 16) * MAX_FITTED_BATCH_FACTOR
    limit = max(1, min(budget // sample, 2 * (budget // decode) + 1, cap))
    return {"limit": int(limit), "budget": budget, "sample_footprint": sample, "decode_footprint": decode}
