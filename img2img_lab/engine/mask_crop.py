"""Inpainting "only masked" (``padding_mask_crop``) through the batched engine.

A diffusers inpainting pipeline given ``padding_mask_crop`` crops the source and the mask around the mask (padded,
widened to the output's aspect ratio: ``mask_processor.get_crop_region``), resizes both to the output size
(``resize_mode="fill"``), inpaints that, and pastes the result back over the source inside the crop
(``image_processor.apply_overlay``). The engine does the same around its batched loop: each source (and mask blur)
becomes a cropped view at the source's size, the cells run batched on the views, and each output is pasted back as
the pipeline pastes it (Chroma's inpainting pipeline crops without pasting back: its output is the inpainted crop,
and so is the engine's). The views are the pixels the pipeline's ``preprocess`` makes (crop, then the same ``fill``
resize; the engine's own ``preprocess`` of an image already at the output size leaves it as it is), so the cells stay
within the engine's tolerance of plain calls. SD's and SDXL's ControlNet inpainting crop the control image the same
way (``prepare_control_image`` takes the crop box), and so does the view; FLUX.1's ControlNet inpainting neither crops
it (its ``prepare_image`` resizes the whole control image to the output size) nor pastes back, and the view leaves the
control image whole too (:func:`crops_control_image`).

>>> from PIL import Image
>>> mask = Image.new("L", (32, 32), 0); mask.paste(255, (20, 20, 28, 28))
>>> view = cropped_view(model.for_mode("inpaint").pipe, Image.new("RGB", (32, 32), "red"), mask, padding=2)
>>> view.coords, view.source.size, view.mask.size
((18, 18, 30, 30), (32, 32), (32, 32))
>>> import diffusers
>>> pastes_back(diffusers.StableDiffusionInpaintPipeline), pastes_back(diffusers.ChromaInpaintPipeline)
(True, False)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from img2img_lab.engine.inpaint_options import cell_condition


@dataclass
class CroppedView:
    """One source's crop around its mask, resized to the source's size (``source``, ``mask``), and what pastes an
    output back: the crop box ``coords``, the ``original`` source and its full ``full_mask``."""

    coords: tuple[int, int, int, int]
    source: object
    mask: object
    original: object
    full_mask: object
    control: object = None  # the control image (a list: one per ControlNet) as the pipeline takes it: cropped or whole


# Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint.StableDiffusionInpaintPipeline.__call__ (step 4: crops_coords, resize_mode="fill", preprocess)
def cropped_view(pipe, source, mask, *, padding: int, control=None) -> CroppedView:
    """The view of ``source`` (and of its ``control`` image or images) the pipeline inpaints at
    ``padding_mask_crop=padding`` with ``mask`` (see the module doc); the output size is the source's."""
    width, height = source.size
    coords = tuple(int(value) for value in pipe.mask_processor.get_crop_region(mask, width, height, pad=padding))

    def cropped(processor, image):
        return processor.resize(image.crop(coords), height, width, resize_mode="fill")

    if control is not None and crops_control_image(pipe):
        controls = [cropped(pipe.control_image_processor, image)
                    for image in (control if isinstance(control, list) else [control])]
        control = controls if isinstance(control, list) else controls[0]
    return CroppedView(coords=coords, source=cropped(pipe.image_processor, source),
                       mask=cropped(pipe.mask_processor, mask), original=source, full_mask=mask, control=control)


def pastes_back(pipeline_class) -> bool:
    """Whether the pipeline class's ``__call__`` pastes its inpainted crop back (it calls ``apply_overlay``: read from
    its compiled code, comprehensions included, so it is the installed diffusers' answer)."""
    import inspect
    import types

    def names(code) -> set[str]:
        nested = [const for const in code.co_consts if isinstance(const, types.CodeType)]
        return set(code.co_names).union(*(names(const) for const in nested))

    return "apply_overlay" in names(inspect.unwrap(pipeline_class.__call__).__code__)


def crops_control_image(pipe) -> bool:
    """Whether the pipeline crops its control image with the source (its ``prepare_control_image`` takes the crop
    box, as SD's and SDXL's ControlNet inpainting do); FLUX.1's ControlNet inpainting leaves it whole.

    >>> crops_control_image(model.pipe)   # the embedded model takes no control image
    False
    """
    import inspect

    prepare = getattr(pipe, "prepare_control_image", None)
    return prepare is not None and "crops_coords" in inspect.signature(prepare).parameters


def denoise_cropped_cells(model, cells: list, sources: list, conditions: list, **options):
    """:func:`~img2img_lab.engine.batched.denoise_cells_batched` (``options``: its keywords) on the cells' cropped
    views; returns ``decode()``, whose outputs are pasted back over their sources as the pipeline pastes them (where
    it does). ``cells`` take one ``padding_mask_crop`` and none is zero-step (a zero-step cell never reaches the
    pipeline: it runs per cell)."""
    from img2img_lab.engine.batched import denoise_cells_batched

    views, view_index, view_cells = [], {}, []
    for cell in cells:
        key = (cell.image_index, cell.mask_blur)
        if key not in view_index:
            condition = cell_condition(cell, conditions[cell.image_index])
            view_index[key] = len(views)
            views.append(cropped_view(model.pipe, sources[cell.image_index], condition["mask_image"],
                                      padding=cell.padding_mask_crop, control=condition.get("control_image")))
        view_cells.append(replace(cell, image_index=view_index[key], mask_blur=0, padding_mask_crop=None,
                                  composite=False))
    conditions = [{"mask_image": view.mask, **({} if view.control is None else {"control_image": view.control})}
                  for view in views]
    decode = denoise_cells_batched(model, view_cells, [view.source for view in views], conditions=conditions,
                                   **options)

    def pasted() -> list:
        outputs = decode()
        if not pastes_back(type(model.pipe)):
            return outputs
        for output, cell in zip(outputs, view_cells):
            view = views[cell.image_index]
            output.image = model.pipe.image_processor.apply_overlay(view.full_mask, view.original, output.image,
                                                                    view.coords)
        return outputs

    return pasted
