"""Each source's conditioning images: the inpainting mask (what is repainted) and the ControlNet control image.

They are made once per source before anything is written (:func:`prepare_conditions`), kept in the run folder —
the subject mask in ``masks/`` (the region metrics use the same mask by default), the control image in
``sources/`` under its pixel hash — and their hashes enter every cell key that uses them, so a changed mask or
control image never reuses an old cell. A repair takes them from the folder alone (:func:`folder_conditions`).

* inpainting masks: ``auto`` (:func:`img2img_lab.metrics.masks.auto_subject_mask`), ``oracle`` (the shapes-world oracle:
  exact on embedded-model sources) or files; ``repaint: background`` repaints everything but the subject,
  ``subject`` the subject. diffusers reads the mask image as white = repaint.
* control images: ``canny`` — the source's Canny edges (:func:`img2img_lab.metrics.edges.edge_map`, white on black, the
  input ``lllyasviel/sd-controlnet-canny`` was trained on); ``silhouette`` — the shapes-world oracle's subject mask,
  white on black (what the embedded model's ControlNet, ``model: embedded-controlnet``, was trained on); or files.
  Depth, pose or segmentation maps of photographs need networks img2img-lab cannot download offline: give them as
  files. A pipeline with several ControlNets (``MultiControlNetModel``) takes a list, one per ControlNet in its
  order; each is kept under its own hash, and the cell's ``control_hash`` joins them with ``+``.

>>> from PIL import Image
>>> source = Image.open("data/sources/red_circle_on_blue.png").convert("RGB")  # an embedded-model source
>>> condition = make_condition(source, "s", inpaint={"mask": "oracle", "repaint": "background"},
...                            control={"image": "canny"})
>>> condition.mask_image.mode, condition.control_image.mode, len(condition.mask_hash)
('L', 'RGB', 64)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from img2img_lab.errors import ImageError, PlanError
from img2img_lab.plan.axes import control_mode_list, section_axes
from img2img_lab.plan.condition_settings import control_images


@dataclass
class SourceCondition:
    """One source's conditioning images, their pixel hashes and origins (``None`` where the plan has none)."""

    subject: np.ndarray | None = None
    repaint: str | None = None
    mask_image: object = None
    mask_hash: str | None = None
    control_image: object = None
    control_hash: str | None = None
    origins: dict = field(default_factory=dict)

    def call_inputs(self, mode: str) -> dict:
        """The pipeline arguments for a cell of ``mode``: ``mask_image`` (inpainting) and ``control_image``."""
        inputs = {"mask_image": self.mask_image} if mode == "inpaint" else {}
        if self.control_image is not None:
            inputs["control_image"] = self.control_image
        return inputs

    def key_part(self, mode: str) -> dict:
        """What enters the cell key of a cell of ``mode`` besides its settings (empty for plain img2img)."""
        part = {"mask": [self.mask_hash, self.repaint]} if mode == "inpaint" else {}
        if self.control_hash is not None:
            part["control"] = self.control_hash
        return part

    def columns(self, mode: str) -> dict:
        """The table's conditioning columns for a cell of ``mode``."""
        return {"repaint": self.repaint if mode == "inpaint" else None,
                "mask_hash": self.mask_hash if mode == "inpaint" else None, "control_hash": self.control_hash}


def make_condition(source, name: str, *, inpaint: dict | None, control: dict | None, fit: dict | None = None,
                   subject: np.ndarray | None = None, control_image=None) -> SourceCondition:
    """The conditions of one prepared source (``subject``/``control_image``: already made, e.g. from a run folder)."""
    from img2img_lab.images.hashes import content_hash

    condition = SourceCondition()
    if inpaint is not None:
        if subject is None:
            subject, condition.origins["mask"] = _subject_mask(source, name, inpaint["mask"], fit)
        if not subject.any():
            raise ImageError(f"{name}: the {condition.origins.get('mask', 'stored')} subject mask is empty, so there "
                             f"is nothing to keep or repaint. Fix: give a mask file (inpaint: {{mask: FOLDER}}).")
        from PIL import Image

        repainted = ~subject if inpaint["repaint"] == "background" else subject
        condition.subject, condition.repaint = subject, inpaint["repaint"]
        condition.mask_image = Image.fromarray(repainted.astype(np.uint8) * 255, mode="L")
        condition.mask_hash = content_hash(condition.mask_image)
    if control is not None:
        if control_image is None:
            made = [_control_image(source, name, how, fit) for how in control_images(control)]
            control_image = made[0][0] if len(made) == 1 else [image for image, _ in made]
            condition.origins["control"] = " + ".join(origin for _, origin in made)
        condition.control_image = control_image
        condition.control_hash = "+".join(content_hash(image) for image in _each(control_image))
    return condition


def _each(control_image) -> list:
    """A source's control images as a list (one per ControlNet; a single ControlNet's is not in a list)."""
    return list(control_image) if isinstance(control_image, list) else [control_image]


def _stored_controls(store, control_hash: str):
    """The control images a run folder keeps under ``control_hash`` (``+`` joins several), or ``None`` if one is
    missing."""
    images = [store.load_source(part) for part in control_hash.split("+")]
    if any(image is None for image in images):
        return None
    return images[0] if len(images) == 1 else images


def _subject_mask(source, name: str, how, fit) -> tuple[np.ndarray, str]:
    from img2img_lab.metrics.masks import auto_subject_mask, load_mask, oracle_subject_mask

    if how == "auto":
        estimate = auto_subject_mask(source)
        return estimate.mask, "auto" + (f" ({'; '.join(estimate.warnings)})" if estimate.warnings else "")
    if how == "oracle":
        return oracle_subject_mask(source), "oracle"
    path = _named_file(how, name, "mask")
    return load_mask(path, fit=fit, size=source.size), f"file {path}"


def _control_image(source, name: str, how, fit):
    from PIL import Image

    if how == "canny":
        from img2img_lab.metrics.edges import edge_map

        edges = edge_map(source).astype(np.uint8) * 255
        return Image.fromarray(np.stack([edges] * 3, axis=-1), mode="RGB"), "canny (edges of the source)"
    if how == "silhouette":
        from img2img_lab.metrics.masks import oracle_subject_mask

        inside = oracle_subject_mask(source).astype(np.uint8) * 255
        if not inside.any():
            raise ImageError(f"{name}: the shapes-world oracle finds no shape, so its silhouette is empty. Fix: use "
                             f"control: {{image: canny}} or a folder of control images.")
        return Image.fromarray(np.stack([inside] * 3, axis=-1), mode="RGB"), "silhouette (the oracle's subject mask)"
    import warnings

    from img2img_lab.images.intake import SmallSourceWarning, fit_to_model, load_image

    path = _named_file(how, name, "control image")
    with warnings.catch_warnings():  # its size is its source's (checked below), not advice about a source
        warnings.simplefilter("ignore", SmallSourceWarning)
        image = load_image(path)
    if fit is not None and image.size == tuple(fit["original"]):
        image = fit_to_model(image, size_multiple=fit["size_multiple"], max_side=fit["max_side"],
                             policy=fit["policy"], name=str(path))
    if image.size != source.size:
        raise ImageError(f"{path}: the control image is {image.width}x{image.height} but its source is "
                         f"{source.width}x{source.height}. Fix: make it from the source image itself.")
    return image, f"file {path}"


def _named_file(how, name: str, what: str) -> Path:
    files = how if isinstance(how, dict) else {path.stem: path for path in sorted(Path(how).glob("*.png"))}
    if not isinstance(how, dict) and not Path(how).is_dir():
        raise PlanError(f"{what} source {how!r} is neither a known name nor a folder. Fix: give a folder of "
                        f"<source name>.png files.")
    if name not in files:
        raise ImageError(f"no {what} for source {name!r} in {how}. Fix: add {name}.png.")
    return Path(files[name])


def prepare_conditions(plan, sources: list, entries: list[dict]) -> list[SourceCondition]:
    """Every source's conditions, made from the plan's settings and files (the plan is checked against the model by
    :func:`check_conditions_fit` first, in :func:`conditions_for_sweep`)."""
    for path, source in zip(plan.images, sources):
        check_inpaint_pixels(plan.inpaint, source, Path(path).stem)
    return [make_condition(source, Path(path).stem, inpaint=plan.inpaint, control=plan.control,
                           fit=entry.get("fit"))
            for path, source, entry in zip(plan.images, sources, entries)]


def check_inpaint_pixels(inpaint: dict | None, source, name: str) -> None:
    """Refuse a mask blur or an "only masked" padding larger than the (prepared) source image.

    >>> from PIL import Image
    >>> check_inpaint_pixels({"mask_blur": [0, 80]}, Image.new("RGB", (64, 64)), "cat")
    Traceback (most recent call last):
    ...
    img2img_lab.errors.PlanError: inpaint mask_blur 80 is larger than cat (64x64 after preparation). Fix: use at most 64 pixels.
    """
    for option in ("mask_blur", "padding_mask_crop"):
        largest = max((value for value in (inpaint or {}).get(option, []) if value is not None), default=0)
        if largest > max(source.size):
            raise PlanError(f"inpaint {option} {largest} is larger than {name} ({source.width}x{source.height} after "
                            f"preparation). Fix: use at most {max(source.size)} pixels.")


def check_conditions_fit(plan, model) -> None:
    """Refuse a plan whose conditions do not fit the pipeline (before anything is written)."""
    name = type(model.pipe).__name__
    if model.needs_control_image and plan.control is None:
        raise PlanError(f"{name} needs a control image per source. Fix: add control: {{image: canny}} to the "
                        f"config (or a folder of <source name>.png control images).")
    refusal = model.family.control_refusal() if model.needs_control_image else None
    if refusal:
        raise PlanError(f"{name} cannot be swept: {refusal}.")
    if plan.control is not None and not model.needs_control_image:
        raise PlanError(f"{name} takes no control image, so control: would change nothing. Fix: remove control: "
                        f"or load a ControlNet img2img pipeline.")
    if plan.control is not None:
        _check_control_count(plan.control, model, name)
        _check_control_modes(plan.control, model.family.control_mode_counts(), name)
    from img2img_lab.models.families.base import call_parameters

    for plural, axis in section_axes("control").items():
        if plan.control is not None and plural in plan.control and axis.call not in call_parameters(model.pipe):
            raise PlanError(f"{name}.__call__ has no {axis.call}, so control {plural} would give identical images. "
                            f"Fix: remove {plural} from control:.")
    for mode in plan.modes:
        model.for_mode(mode)
    crops = [value for value in (plan.inpaint or {}).get("padding_mask_crop") or () if value is not None]
    inpainter = model.for_mode("inpaint") if crops and "inpaint" in plan.modes else None
    why = inpainter and inpainter.family.crop_refused.get(type(inpainter.pipe).__name__)
    if why:
        raise PlanError(f"{type(inpainter.pipe).__name__} cannot crop around the mask: {why}. Fix: remove "
                        f"padding_mask_crop from inpaint:, or inpaint with StableDiffusionInpaintPipeline.")


def _check_control_count(control: dict, model, name: str) -> None:
    """One control image per ControlNet; SDXL's union ControlNet, and FLUX.1's multi-ControlNet of one (diffusers'
    way to give FLUX.1's union ControlNet several maps), take any number (one per mode)."""
    controlnet = getattr(model.pipe, "controlnet", None)
    nets = len(getattr(controlnet, "nets", None) or [None])
    given = len(control_images(control))
    per_mode = type(controlnet).__name__ == "ControlNetUnionModel" or (
        type(controlnet).__name__ == "FluxMultiControlNetModel" and nets == 1)
    if given != nets and not per_mode:
        raise PlanError(f"{name} holds {nets} ControlNet{'s' * (nets > 1)} but control: image names {given} control "
                        f"image{'s' * (given > 1)} per source. Fix: give one per ControlNet, in its order: control: "
                        f"{{image: [{', '.join(['canny'] * nets)}]}}.")


def _check_control_modes(control: dict, counts: tuple, name: str) -> None:
    """A union ControlNet needs ``control_modes`` (one mode per control image, each one it knows); a single-mode
    ControlNet refuses them; a mix of both is refused (a single-mode one would be keyed by a mode it ignores).

    >>> _check_control_modes({"image": "canny", "control_modes": ["3,1"]}, (6,), "Pipe")
    Traceback (most recent call last):
    ...
    img2img_lab.errors.PlanError: control_modes value '3,1' names 2 modes but control: image names 1 control image per source. Fix: one mode per control image, in its order: e.g. control_modes: [3].
    """
    given, images = control.get("control_modes") or [], len(control_images(control))
    values = [value for value in given if value is not None]  # null: no mode (the axis's baseline)
    if any(counts) and not all(counts):
        raise PlanError(f"{name} mixes union and single-mode ControlNets, whose modes img2img-lab cannot key apart. "
                        f"Fix: load only union ControlNets or only single-mode ones.")
    if any(counts) and (not values or len(values) < len(given)):
        raise PlanError(f"{name} holds a union ControlNet, which needs the mode of each control image (the kind of "
                        f"map it is: see the ControlNet's model card). Fix: add e.g. control_modes: "
                        f"{_modes_example(images)} to control:.")
    if values and not any(counts):
        raise PlanError(f"{name}'s ControlNet has a single mode, so control_modes would give identical images. "
                        f"Fix: remove control_modes from control: (or load a union ControlNet).")
    for value in values:
        modes = control_mode_list(value)
        if len(modes) != images:
            raise PlanError(f"control_modes value {value!r} names {len(modes)} mode{'s' * (len(modes) > 1)} but "
                            f"control: image names {images} control image{'s' * (images > 1)} per source. Fix: one "
                            f"mode per control image, in its order: e.g. control_modes: {_modes_example(images)}.")
        limits = counts if len(counts) == len(modes) else counts[:1] * len(modes)  # one net: every mode is its
        for mode, limit in zip(modes, limits):
            if mode >= limit:
                raise PlanError(f"control_modes value {value!r}: mode {mode} is not one the ControlNet knows (it "
                                f"has modes 0 to {limit - 1}). Fix: use a mode from its model card.")


def _modes_example(images: int) -> str:
    """A ``control_modes`` value for ``images`` control images: ``[3]`` for one, ``[[3, 1]]`` for two."""
    return "[3]" if images == 1 else "[[" + ", ".join(["3", "1"] + ["0"] * (images - 2)) + "]]"


def folder_conditions(plan, store, sources: list, entries: list[dict]) -> list[SourceCondition]:
    """The conditions a run folder keeps (its stored subject masks and control images): what a repair uses."""
    conditions = []
    for path, source, entry in zip(plan.images, sources, entries):
        subject = store.load_mask(entry["hash"]) if plan.inpaint is not None else None
        control_hash = (entry.get("control") or {}).get("hash")
        control = _stored_controls(store, control_hash) if plan.control is not None and control_hash else None
        if (plan.inpaint is not None and subject is None) or (plan.control is not None and control is None):
            raise ImageError(f"the run folder lost the mask or control image of {Path(path).stem}. Fix: sweep again "
                             f"from the original files instead of repairing.")
        conditions.append(make_condition(source, Path(path).stem, inpaint=plan.inpaint, control=plan.control,
                                         subject=subject, control_image=control))
    return conditions


def store_conditions(store, conditions: list[SourceCondition], source_hashes: list[str]) -> dict:
    """Keep each source's subject mask and control image in the run folder; return the manifest's records
    ``{source hash: {"mask": origin, "control": {"hash", "origin"}}}``."""
    records = {}
    for condition, source_hash in zip(conditions, source_hashes):
        record = {}
        if condition.subject is not None:
            store.save_mask(source_hash, condition.subject)
            record["mask"] = condition.origins.get("mask", "stored")
        if condition.control_image is not None:
            for part, image in zip(condition.control_hash.split("+"), _each(condition.control_image)):
                store.write_source(part, image)
            record["control"] = {"hash": condition.control_hash, "origin": condition.origins.get("control", "stored")}
        if record:
            records[source_hash] = record
    return records


def conditions_for_sweep(plan, model, sources: list, entries: list[dict], folder_store=None):
    """The sweep's conditions (``None`` for a plain img2img plan on a pipeline that needs none): from the plan's
    files, or from the run folder (``folder_store``: a repair)."""
    check_conditions_fit(plan, model)
    if plan.modes == ["img2img"] and plan.control is None:
        return None
    if folder_store is not None:
        return folder_conditions(plan, folder_store, sources, entries)
    return prepare_conditions(plan, sources, entries)


def with_controls(entries: list[dict], conditions: list[SourceCondition] | None) -> list[dict]:
    """The manifest's source entries with each source's control image (``{"hash", "origin"}``) recorded: what a
    repair finds the control image by."""
    if conditions is None:
        return entries
    return [{**entry, "control": {"hash": condition.control_hash,
                                  "origin": condition.origins.get("control", (entry.get("control") or {}).get("origin",
                                                                                                          "stored"))}}
            if condition.control_hash else entry for entry, condition in zip(entries, conditions)]


def record_conditions(store, conditions: list[SourceCondition], source_hashes: list[str]) -> None:
    """Store the conditions (:func:`store_conditions`) and record the subject masks' origins under the manifest's
    ``masks`` (as the region metrics record theirs); control images are recorded in the source entries
    (:func:`with_controls`, before the folder is created)."""
    records = store_conditions(store, conditions, source_hashes)
    masks = {source_hash: record["mask"] for source_hash, record in records.items() if "mask" in record}
    if masks:
        store.update_manifest(lambda manifest: {**manifest, "masks": {**(manifest.get("masks") or {}), **masks}})


def strength_meaning(model, cell, steps) -> dict:
    """What the strength meant for this cell: ``start_from`` and ``inpaint_method`` (see
    :data:`img2img_lab.plan.schema.STEP_COLUMNS`)."""
    runner = model.for_mode(cell.mode)
    if steps.zero_step:
        start = "source"
    elif runner.inpaints and cell.strength == 1.0:
        start = "pure noise"
    else:
        start = "noised source"
    return {"start_from": start, "inpaint_method": runner.family.inpaint_method() if runner.inpaints else None}


def row_condition(store, row: dict, source) -> dict | None:
    """The ``mask_image`` / ``control_image`` a stored row was generated with, rebuilt from the run folder (what
    ``verify`` regenerates with); ``None`` for a plain img2img row. A mask whose pixels no longer hash to the row's
    ``mask_hash`` (a mask made anew since) raises :class:`ImageError` naming the cell."""
    from img2img_lab.plan.schema import row_conditions

    mode, repaint, mask_hash, control_hash = row_conditions(row)
    if mode == "img2img" and control_hash is None:
        return None
    subject = store.load_mask(row["source_hash"]) if mode == "inpaint" else None
    control = _stored_controls(store, control_hash) if control_hash is not None else None
    if mode == "inpaint" and subject is None:
        raise ImageError(f"{row['cell_key']}: the run folder has no mask for its source. Fix: sweep it again.")
    condition = make_condition(source, str(row.get("source_name", "")),
                               inpaint={"mask": "stored", "repaint": repaint} if mode == "inpaint" else None,
                               control={"image": "stored"} if control is not None else None, subject=subject,
                               control_image=control)
    if mode == "inpaint" and condition.mask_hash != mask_hash:
        raise ImageError(f"{row['cell_key']}: the stored mask of its source changed since the cell was made (a mask "
                         f"made anew by measure --masks?). Fix: sweep the inpainting cells again.")
    return condition.call_inputs(mode)
