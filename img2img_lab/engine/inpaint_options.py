"""Inpainting the way people's tools run it: the mask blurred before the call, the source pasted back after it.

A cell's ``mask_blur``, ``composite`` and ``padding_mask_crop`` (axes: :mod:`img2img_lab.plan.condition_settings`)
reach the plain diffusers call as a user writes it::

    mask = pipe.mask_processor.blur(mask, blur_factor=cell.mask_blur)          # mask_blur > 0
    image = pipe(image=source, mask_image=mask, ..., padding_mask_crop=cell.padding_mask_crop).images[0]
    image = pipe.image_processor.apply_overlay(mask, source, image)            # composite, without a crop

(with ``padding_mask_crop`` the pipeline crops around the mask, inpaints the crop at full size and pastes it back
over the source itself, so the cell is composited already). AUTOMATIC1111 does the same with its "mask blur",
"inpaint area: only masked" + "only masked padding" and its overlay of the original (docs/how-to/masks-and-control.md
cites the lines).

>>> from PIL import Image
>>> mask = Image.new("L", (16, 16), 0); mask.paste(255, (0, 0, 8, 16))
>>> blurred_mask(mask, 0) is mask, blurred_mask(mask, 2).getpixel((8, 8)) not in (0, 255)
(True, True)
"""

from __future__ import annotations


def blurred_mask(mask, blur: int):
    """``mask`` blurred as diffusers' ``VaeImageProcessor.blur`` does (a Gaussian of radius ``blur``; 0: unchanged)."""
    if not blur:
        return mask
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor.blur(mask, blur_factor=int(blur))


def cell_condition(cell, condition: dict | None) -> dict | None:
    """The conditioning arguments of ``cell``'s call: its source's, the mask blurred by the cell's ``mask_blur``."""
    if not condition or "mask_image" not in condition or not getattr(cell, "mask_blur", 0):
        return condition
    return {**condition, "mask_image": blurred_mask(condition["mask_image"], cell.mask_blur)}


def composited(pipe, cell, source, condition: dict | None, image, *, pipeline_pasted: bool = True):
    """``image`` with the source pasted back where the (blurred) mask keeps it, where the cell composites and the
    pipeline has not done so itself (``padding_mask_crop`` with ``pipeline_pasted``: a zero-step cell never reached
    the pipeline, so it is pasted here)."""
    if not getattr(cell, "composite", False) or not condition or "mask_image" not in condition:
        return image
    if getattr(cell, "padding_mask_crop", None) is not None and pipeline_pasted:
        return image
    return pipe.image_processor.apply_overlay(condition["mask_image"], source, image)
