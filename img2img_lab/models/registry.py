"""Which family module runs which diffusers pipeline class, which classes are refused and why, and the never-guess
check: every table here is built from the family modules (:mod:`img2img_lab.models.families`).

Every class of diffusers' ``AUTO_IMAGE2IMAGE_PIPELINES_MAPPING`` (26) and ``AUTO_INPAINT_PIPELINES_MAPPING`` (19),
and the other image-conditioned classes people load (Chroma, PAG, ControlNet), is named by exactly one family
module: as a class it runs (:data:`FAMILIES`), as one with no strength (:data:`NO_STRENGTH`: the image is a
reference or a condition), or as one whose strength img2img-lab cannot record truthfully (:data:`REFUSED`). A class
named nowhere runs only when :func:`refusal` can check it: ``strength`` in its ``__call__``, a ``get_timesteps`` that
runs on a copy of the scheduler, and a scheduler whose noise formula is known; otherwise one line says what is
missing.

>>> FAMILIES["ChromaImg2ImgPipeline"].name, FAMILIES["QwenImageInpaintPipeline"].name
('chroma', 'qwenimage')
>>> print(NO_STRENGTH["FluxKontextPipeline"])
edits from a reference image and always starts from noise: it has no strength dial
"""

from __future__ import annotations

from img2img_lab.errors import ModelError
from img2img_lab.models.families.base import Family, call_parameters, schedule_of
from img2img_lab.models.families.chroma import ChromaFamily
from img2img_lab.models.families.deepfloyd_if import DeepFloydIFFamily
from img2img_lab.models.families.flux import FluxFamily
from img2img_lab.models.families.flux2 import Flux2Family
from img2img_lab.models.families.kandinsky import KandinskyFamily
from img2img_lab.models.families.lcm import LCMFamily
from img2img_lab.models.families.qwenimage import QwenImageFamily
from img2img_lab.models.families.sana import SanaFamily
from img2img_lab.models.families.sd3 import SD3Family
from img2img_lab.models.families.sdxl import SDXLFamily
from img2img_lab.models.families.stable_diffusion import StableDiffusionFamily
from img2img_lab.models.families.tiny_parts import for_inference
from img2img_lab.models.families.z_image import ZImageFamily

#: Every family, in the order they are listed (one class per module of :mod:`img2img_lab.models.families`).
FAMILY_CLASSES: tuple[type[Family], ...] = (
    StableDiffusionFamily, SDXLFamily, SD3Family, FluxFamily, ChromaFamily, QwenImageFamily, ZImageFamily, LCMFamily,
    Flux2Family, KandinskyFamily, DeepFloydIFFamily, SanaFamily)

#: diffusers pipeline class name -> the family that runs it.
FAMILIES: dict[str, type[Family]] = {name: family for family in FAMILY_CLASSES
                                     for names in family.pipelines.values() for name in names}
#: Classes whose ``__call__`` has no strength, and what they do instead.
NO_STRENGTH: dict[str, str] = {name: why for family in FAMILY_CLASSES for name, why in family.no_strength.items()}
#: Classes with a strength that img2img-lab cannot record truthfully, and why.
REFUSED: dict[str, str] = {name: why for family in FAMILY_CLASSES for name, why in family.refused.items()}
#: The class a model folder's ``_class_name`` is swept as (a text-to-image pipeline -> its img2img sibling).
IMG2IMG_PIPELINE_OF: dict[str, str] = {named: swept for family in FAMILY_CLASSES
                                       for named, swept in family.text_to_image.items()}
#: Tiny random pipelines (tests, benchmarks): name -> builder, from every family module.
TINY_PIPELINES: dict = {name: builder for family in FAMILY_CLASSES for name, builder in family.tiny_pipelines.items()}
#: Real-size architectures (``data/architectures/<name>.json``, random weights, for benchmarks) -> their family.
REAL_SIZE: dict[str, type[Family]] = {name: family for family in FAMILY_CLASSES for name in family.real_size}
#: Bundled scheduler configs (``data/schedulers/<name>.json``), in family order.
BUNDLED_SCHEDULERS: tuple[str, ...] = tuple(name for family in FAMILY_CLASSES for name in family.scheduler_configs)


def family_of(class_name: str) -> type[Family]:
    """The family that runs ``class_name`` (the generic :class:`Family`, checked never guessed, for a class no module
    names).

    >>> family_of("StableDiffusionXLInpaintPipeline").label, family_of("SomethingNew").name
    ('Stable Diffusion XL (also Turbo)', 'generic')
    """
    return FAMILIES.get(class_name, Family)


def refusal(pipe) -> str | None:
    """Why img2img-lab cannot sweep this pipeline's strength (one sentence naming the class and the fix), or ``None``.

    >>> refusal(pipe) is None
    True
    """
    name = type(pipe).__name__
    if name in NO_STRENGTH or "strength" not in call_parameters(pipe):
        what = NO_STRENGTH.get(name, "has no strength argument in its __call__")
        return f"{name} {what}. Fix: sweep an img2img or inpainting pipeline (e.g. FluxImg2ImgPipeline)."
    if name in REFUSED:
        swept = ", ".join(family.label for family in FAMILY_CLASSES if family.pipelines)
        return f"{name} {REFUSED[name]}. Fix: use an img2img or inpainting pipeline of {swept}."
    if name not in FAMILIES:
        missing = _unchecked(pipe)
        if missing:
            return (f"{name} is not a pipeline img2img-lab knows and it cannot check it: {missing}. Fix: use a known "
                    f"img2img or inpainting pipeline, or ask for a family module.")
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


def support_table() -> list[dict]:
    """Every class of diffusers' two auto mappings: ``{"mapping", "key", "class", "family", "status", "why"}``.

    >>> rows = support_table()
    >>> len(rows), sorted({row["status"] for row in rows})
    (45, ['no strength', 'refused', 'supported'])
    """
    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, AUTO_INPAINT_PIPELINES_MAPPING

    owner = {name: family for family in FAMILY_CLASSES for name in family.class_names()}
    rows = []
    for mapping, table in (("img2img", AUTO_IMAGE2IMAGE_PIPELINES_MAPPING), ("inpaint", AUTO_INPAINT_PIPELINES_MAPPING)):
        for key, cls in table.items():
            name = cls.__name__
            family = owner.get(name)
            if name in FAMILIES:
                status, why = "supported", f"{family.name} rule ({family.task_of(name)})"
            elif name in NO_STRENGTH:
                status, why = "no strength", NO_STRENGTH[name]
            else:
                status, why = "refused", REFUSED.get(name, "no family module names it")
            rows.append({"mapping": mapping, "key": key, "class": name, "family": family.name if family else None,
                         "status": status, "why": why})
    return rows


def tiny_pipeline(name: str, *, seed: int = 0):
    """A random-weight pipeline of the family modules' :data:`TINY_PIPELINES` (CPU, fp32, evaluation mode, progress bar
    off), for tests and benchmarks; never a model (:mod:`img2img_lab.testing` is its public face).

    >>> type(tiny_pipeline("sd3")).__name__
    'StableDiffusion3Img2ImgPipeline'
    """
    import torch

    if name not in TINY_PIPELINES:
        raise ModelError(f"unknown tiny pipeline {name!r}. Fix: use one of {', '.join(TINY_PIPELINES)}.")
    torch.manual_seed(seed)
    return for_inference(TINY_PIPELINES[name]())
