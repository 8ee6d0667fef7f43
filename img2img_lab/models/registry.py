"""Which adapter runs which diffusers pipeline class, which classes are refused and why, and the never-guess check.

Every class of diffusers' ``AUTO_IMAGE2IMAGE_PIPELINES_MAPPING`` (26) and ``AUTO_INPAINT_PIPELINES_MAPPING`` (19),
and the other ``*Img2Img*`` / ``*Inpaint*`` classes people load (Chroma, PAG, ControlNet), is named here: in
:data:`FAMILIES` (an adapter of :mod:`img2img_lab.models.families` by its timestep rule), in :data:`NO_STRENGTH` (its
``__call__`` has no strength: the image is a reference or a condition), or in :data:`REFUSED` (a strength dial
img2img-lab cannot record truthfully, with the reason). A class named nowhere runs only when
:func:`adapter_for` can check it: ``strength`` in its ``__call__``, a ``get_timesteps`` that runs on a copy of
the scheduler, and a scheduler whose noise formula is known; otherwise one line says what is missing.

>>> FAMILIES["ChromaImg2ImgPipeline"].name, FAMILIES["QwenImageInpaintPipeline"].name
('chroma', 'qwenimage')
>>> print(NO_STRENGTH["FluxKontextPipeline"])
edits from a reference image and always starts from noise: it has no strength dial
"""

from __future__ import annotations

from img2img_lab.errors import ModelError
from img2img_lab.models.families import (ChromaFamily, Family, FluxFamily, LCMFamily, QwenImageFamily, SD3Family,
                                  SDXLFamily, StableDiffusionFamily, ZImageFamily, call_parameters, schedule_of)

_SD = ("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionPAGImg2ImgPipeline",
       "StableDiffusionPAGInpaintPipeline", "StableDiffusionControlNetImg2ImgPipeline",
       "StableDiffusionControlNetInpaintPipeline", "StableDiffusionControlNetPAGInpaintPipeline",
       "AltDiffusionImg2ImgPipeline")
_SDXL = ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline", "StableDiffusionXLPAGImg2ImgPipeline",
         "StableDiffusionXLPAGInpaintPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
         "StableDiffusionXLControlNetInpaintPipeline", "StableDiffusionXLControlNetPAGImg2ImgPipeline")
_SD3 = ("StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline", "StableDiffusion3PAGImg2ImgPipeline")
_FLUX = ("FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxControlImg2ImgPipeline", "FluxControlInpaintPipeline",
         "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline")

#: diffusers pipeline class name -> its adapter (by timestep rule).
FAMILIES: dict[str, type[Family]] = {
    **dict.fromkeys(_SD, StableDiffusionFamily), **dict.fromkeys(_SDXL, SDXLFamily), **dict.fromkeys(_SD3, SD3Family),
    **dict.fromkeys(_FLUX, FluxFamily),
    "ChromaImg2ImgPipeline": ChromaFamily, "ChromaInpaintPipeline": ChromaFamily,
    "QwenImageImg2ImgPipeline": QwenImageFamily, "QwenImageInpaintPipeline": QwenImageFamily,
    "QwenImageEditInpaintPipeline": QwenImageFamily,
    "ZImageImg2ImgPipeline": ZImageFamily, "ZImageInpaintPipeline": ZImageFamily,
    "LatentConsistencyModelImg2ImgPipeline": LCMFamily,
}

_REFERENCE = "edits from a reference image and always starts from noise: it has no strength dial"
#: Classes whose ``__call__`` has no strength, and what they do instead.
NO_STRENGTH: dict[str, str] = {
    "FluxKontextPipeline": _REFERENCE, "FluxKontextInpaintPipeline": _REFERENCE, "Flux2Pipeline": _REFERENCE,
    "Flux2KleinPipeline": _REFERENCE, "QwenImageEditPipeline": _REFERENCE, "QwenImageEditPlusPipeline": _REFERENCE,
    "QwenImageLayeredPipeline": "splits an image into layers from noise: it has no strength dial",
    "StableDiffusion3ControlNetInpaintingPipeline": "inpaints through a ControlNet from pure noise: it has no "
                                                    "strength dial",
    "KandinskyInpaintCombinedPipeline": "inpaints from pure noise with a prior: it has no strength dial",
    "KandinskyV22InpaintCombinedPipeline": "inpaints from pure noise with a prior: it has no strength dial",
    "KandinskyV22InpaintPipeline": "inpaints from pure noise: it has no strength dial",
    "StableUnCLIPImg2ImgPipeline": "makes variations from an image embedding, starting from noise: it has no "
                                   "strength dial",
}

#: Classes with a strength that img2img-lab cannot record truthfully, and why.
REFUSED: dict[str, str] = {
    "IFImg2ImgPipeline": "is a pixel-space cascade (stage I at 64 px, no VAE): img2img-lab's VAE floor and start-noise "
                         "records assume a latent pipeline",
    "IFInpaintingPipeline": "is a pixel-space cascade (stage I at 64 px, no VAE): img2img-lab's VAE floor and "
                            "start-noise records assume a latent pipeline",
    "KandinskyImg2ImgCombinedPipeline": "runs a prior first and decodes with MoVQ, not a VAE: not supported",
    "KandinskyV22Img2ImgCombinedPipeline": "runs a prior first and decodes with MoVQ, not a VAE: not supported",
    "Kandinsky3Img2ImgPipeline": "decodes with MoVQ, not a VAE, and slices its timesteps without the scheduler's "
                                 "order: not supported",
    "StableDiffusionXLControlNetUnionImg2ImgPipeline": "needs a control_mode per control image (which kind of map "
                                                       "it is), which img2img-lab does not sweep yet",
    "StableDiffusionXLControlNetUnionInpaintPipeline": "needs a control_mode per control image (which kind of map "
                                                       "it is), which img2img-lab does not sweep yet",
    "SanaSprintImg2ImgPipeline": "runs the SCM scheduler (max_timesteps, intermediate_timesteps), whose strength rule "
                                 "img2img-lab does not implement",
}


def refusal(pipe) -> str | None:
    """Why img2img-lab cannot sweep this pipeline's strength (one sentence naming the class), or ``None``.

    >>> from img2img_lab.testing.tiny_families import make_tiny_family
    >>> refusal(make_tiny_family("sd1")) is None
    True
    """
    name = type(pipe).__name__
    if name in NO_STRENGTH or "strength" not in call_parameters(pipe):
        what = NO_STRENGTH.get(name, "has no strength argument in its __call__")
        return f"{name} {what}. Fix: sweep an img2img or inpainting pipeline (e.g. FluxImg2ImgPipeline)."
    controlnet = getattr(getattr(pipe, "controlnet", None), "config", None)
    if controlnet is not None and (controlnet.get("num_mode") or controlnet.get("num_control_type")):
        return (f"{name} carries a union ControlNet, which needs a control_mode per control image; img2img-lab does "
                f"not sweep it yet. Fix: load a single-mode ControlNet (e.g. a Canny one).")
    if name in REFUSED:
        return f"{name} {REFUSED[name]}. Fix: use an img2img or inpainting pipeline of SD, SDXL, SD3, FLUX.1, Chroma, Qwen-Image, Z-Image or LCM."
    if name not in FAMILIES:
        missing = _unchecked(pipe)
        if missing:
            return (f"{name} is not a pipeline img2img-lab knows and it cannot check it: {missing}. Fix: use a known "
                    f"img2img or inpainting pipeline, or ask for an adapter.")
    if schedule_of(pipe.scheduler) is None:
        return (f"{name}'s scheduler {type(pipe.scheduler).__name__} has a noise formula img2img-lab does not know "
                f"(it records the start noise). Fix: use a diffusers scheduler by name (--scheduler ddim, euler...).")
    return None


def _unchecked(pipe) -> str | None:
    """What is missing to run an unknown class without guessing (``None``: its own get_timesteps ran on a copy)."""
    method = getattr(type(pipe), "get_timesteps", None)
    if method is None:
        return "it has no get_timesteps to run"
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    try:
        scheduler.set_timesteps(4)
        Family(pipe).get_timesteps(scheduler, 4, 0.5)
    except Exception as error:  # noqa: BLE001 - any failure means: not checkable
        return f"its get_timesteps failed on a copy of the scheduler ({type(error).__name__}: {error})"
    return None


def adapter_for(pipe) -> Family:
    """The adapter of ``pipe`` (:class:`~img2img_lab.models.families.Family` itself for a class only checked, never
    guessed); raises :class:`ModelError` for a refused class (see :func:`refusal`)."""
    reason = refusal(pipe)
    if reason is not None:
        raise ModelError(reason)
    return FAMILIES.get(type(pipe).__name__, Family)(pipe)


def support_table() -> list[dict]:
    """Every class of diffusers' two auto mappings: ``{"mapping", "key", "class", "status", "why"}``.

    >>> rows = support_table()
    >>> len(rows), sorted({row["status"] for row in rows})
    (45, ['refused', 'supported'])
    """
    import img2img_lab  # noqa: F401 - torchvision shim first
    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, AUTO_INPAINT_PIPELINES_MAPPING

    rows = []
    for mapping, table in (("img2img", AUTO_IMAGE2IMAGE_PIPELINES_MAPPING), ("inpaint", AUTO_INPAINT_PIPELINES_MAPPING)):
        for key, cls in table.items():
            name = cls.__name__
            if name in FAMILIES:
                status, why = "supported", f"{FAMILIES[name].name} rule"
            else:
                status, why = "refused", NO_STRENGTH.get(name) or REFUSED.get(name) or "no adapter"
            rows.append({"mapping": mapping, "key": key, "class": name, "status": status, "why": why})
    return rows
