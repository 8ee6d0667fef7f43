"""Subject masks (``True`` on the product, the shape, the person) for the region metrics of :mod:`img2img_lab.metrics.regions`.

Three sources:

* **a mask file** per source image (PNG or any image: white = subject; with transparency, the opaque pixels), sized
  like the source file and fitted exactly as the source was (the run folder's manifest records how);
* **automatic** (:func:`auto_subject_mask`) for product shots on a plain background: the background colour is the
  median of the image's 2-px border; pixels farther from it than a threshold (CIELAB distance; Otsu's threshold,
  at least ΔE 12 and above the border's own noise) are the subject; a small opening, the largest connected region,
  its holes filled. Limits: a busy or gradient background, a subject touching the border, a subject the colour of
  the background (white on white), and cast shadows darker than the threshold (they join the subject) — the
  estimate says when it is poor;
* **the shapes-world oracle** (:func:`oracle_subject_mask`): the exact shape region of an embedded-model source.

A run folder keeps each source's mask (``masks/``, beside ``sources/``) with its origin in the manifest, so a
measurement reproduces.

>>> y, x = np.mgrid[:64, :64]
>>> disc = (y - 32) ** 2 + (x - 32) ** 2 < 19 ** 2  # a red disc on blue
>>> estimate = auto_subject_mask(np.where(disc[..., None], [200, 30, 30], [30, 40, 190]).astype(np.uint8))
>>> round(mask_iou(estimate.mask, disc), 2), estimate.warnings
(1.0, [])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from img2img_lab.errors import ImageError

#: The least CIELAB distance from the background colour that counts as subject.
MIN_SUBJECT_DELTA = 12.0


class MaskWarning(UserWarning):
    """An automatic mask that may be wrong (said once, in one line, by the CLI and the manifest)."""


@dataclass
class MaskEstimate:
    """An automatic mask and what makes it doubtful (empty when it looks sound)."""

    mask: np.ndarray
    threshold: float
    warnings: list = field(default_factory=list)


def mask_iou(a, b) -> float:
    """Intersection over union of two boolean masks (1.0 for two empty masks).

    >>> mask_iou(np.eye(4, dtype=bool), np.eye(4, dtype=bool)), mask_iou(np.eye(4, dtype=bool), ~np.eye(4, dtype=bool))
    (1.0, 0.0)
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def auto_subject_mask(image, *, min_delta: float = MIN_SUBJECT_DELTA) -> MaskEstimate:
    """The subject of a plain-background image (see the module doc), with warnings when the estimate is poor."""
    from scipy import ndimage
    from skimage.color import rgb2lab
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    from img2img_lab.images.arrays import metric_array

    lab = rgb2lab(metric_array(image))
    border = np.concatenate([lab[:2].reshape(-1, 3), lab[-2:].reshape(-1, 3), lab[:, :2].reshape(-1, 3),
                             lab[:, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(lab - background, axis=2)
    border_noise = float(np.percentile(np.linalg.norm(border - background, axis=1), 95))
    spread = float(distance.max() - distance.min())
    threshold = max(min_delta, border_noise + 5.0, float(threshold_otsu(distance)) if spread > 1e-6 else min_delta)
    mask = distance > threshold
    radius = max(1, round(min(mask.shape) / 128))
    mask = ndimage.binary_opening(mask, structure=np.ones((2 * radius + 1,) * 2, bool))
    labels = label(mask, connectivity=2)
    if labels.max():
        mask = labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)
        mask = ndimage.binary_fill_holes(mask)
    return MaskEstimate(mask, threshold, _doubts(mask, border_noise))


def _doubts(mask: np.ndarray, border_noise: float) -> list[str]:
    """Why an automatic mask may be wrong, in words."""
    doubts = []
    share = float(mask.mean())
    if share < 0.005:
        doubts.append("no subject stands out from the background")
    elif share > 0.9:
        doubts.append(f"the 'subject' covers {share:.0%} of the image: the background is not plain")
    if border_noise > 10:
        doubts.append(f"the border is not one plain colour (ΔE spread {border_noise:.0f}): a busy or gradient background")
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if edge.mean() > 0.1:
        doubts.append(f"the subject touches {edge.mean():.0%} of the image border: it may be cut off")
    return doubts


def oracle_subject_mask(image) -> np.ndarray:
    """The shape region the shapes-world oracle reads (exact on an embedded-model source; empty without a shape):
    the ``oracle`` mask provider the shapes world registers as a plugin (:func:`~img2img_lab.metrics.registry.mask_provider`).

    >>> from PIL import Image
    >>> star = oracle_subject_mask(Image.open("data/sources/white_star_on_red.png"))  # an embedded-model source
    >>> star.shape, round(float(star.mean()), 3)  # the star covers 15% of the picture
    ((64, 64), 0.153)
    """
    from img2img_lab.metrics.registry import mask_provider

    return mask_provider("oracle")(image)


def load_mask(path: str | os.PathLike, *, fit: dict | None = None, size: tuple[int, int]) -> np.ndarray:
    """A mask file as a boolean array of ``size`` (width, height): white (or, with transparency, opaque) = subject.

    ``fit`` is how the source was sized for the model (a manifest source entry's ``fit``: the original size,
    ``max_side``, ``size_multiple``, ``policy``); the mask is fitted the same way. Without it the file must already
    be ``size``.
    """
    from PIL import Image, UnidentifiedImageError

    from img2img_lab.images.intake import fit_to_model

    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except (OSError, UnidentifiedImageError) as error:
        raise ImageError(f"{path}: the mask cannot be read ({error}). Fix: give a PNG, white on the subject.") from None
    if "A" in image.getbands() and image.getextrema()[image.getbands().index("A")][0] < 255:
        grey = image.getchannel("A")
    else:
        grey = image.convert("L")
    if fit is not None:
        original = tuple(fit["original"])
        if grey.size != original:
            raise ImageError(f"{path}: the mask is {grey.width}x{grey.height} but its source is "
                             f"{original[0]}x{original[1]}. Fix: draw the mask on the source image itself.")
        grey = fit_to_model(grey, size_multiple=fit["size_multiple"], max_side=fit["max_side"], policy=fit["policy"],
                            name=str(path))
    if grey.size != tuple(size):
        raise ImageError(f"{path}: the mask is {grey.width}x{grey.height} but the source is {size[0]}x{size[1]}. "
                         f"Fix: give a mask of the source's size.")
    mask = np.asarray(grey) > 127
    if not mask.any():
        raise ImageError(f"{path}: the mask is empty (no white pixel). Fix: paint the subject white.")
    return mask


def resolve_masks(store, source_rows: dict, how="auto", *, remake: bool = False) -> dict[str, np.ndarray]:
    """``{source hash: mask}`` for the sources named in ``source_rows`` (``{hash: source name}``): the run folder's
    stored mask (unless ``remake``), else made ``how`` — ``"auto"``, ``"oracle"``, or mask files (a folder of
    ``<source name>.png``, or ``{source name: path}``) — and stored with its origin in the manifest."""
    entries = {entry["hash"]: entry for entry in store.read_manifest().get("sources", [])}
    masks, origins = {}, {}
    for source_hash, name in source_rows.items():
        stored = None if remake else store.load_mask(source_hash)
        if stored is not None:
            masks[source_hash] = stored
            continue
        masks[source_hash], origins[source_hash] = _made_mask(store, source_hash, name, entries.get(source_hash), how)
        store.save_mask(source_hash, masks[source_hash])
    if origins:
        store.update_manifest(lambda manifest: {**manifest, "masks": {**(manifest.get("masks") or {}), **origins}})
    return masks


def _made_mask(store, source_hash: str, name: str, entry: dict | None, how) -> tuple[np.ndarray, str]:
    import warnings

    source = store.load_source(source_hash)
    if how == "auto":
        estimate = auto_subject_mask(source)
        for doubt in estimate.warnings:
            warnings.warn(f"{name}: automatic subject mask: {doubt}. Fix: give a mask file (--masks FOLDER).",
                          MaskWarning, stacklevel=3)
        return estimate.mask, "auto" + (f" ({'; '.join(estimate.warnings)})" if estimate.warnings else "")
    if how == "oracle":
        return oracle_subject_mask(source), "oracle"
    files = how if isinstance(how, dict) else {path.stem: path for path in Path(how).glob("*.png")}
    if name not in files:
        raise ImageError(f"no mask for source {name!r} in {how}. Fix: add {name}.png (white on the subject).")
    fit = (entry or {}).get("fit")
    return load_mask(files[name], fit=fit, size=source.size), f"file {files[name]}"


def masks_for_measuring(store, frames, names, how) -> dict | None:
    """Each source's subject mask when a region metric is asked for (:func:`resolve_masks`), for ``measure_run``; the
    region values of a source whose mask is made anew and differs are cleared, so they are measured again."""
    from img2img_lab.metrics.registry import metric_spec

    regional = [name for name in names if metric_spec(name).needs_mask]
    if not regional:
        return None
    sources: dict = {}
    for frame in frames:  # the table names its sources; the floor table only hashes them
        if not frame.empty:
            for source_hash, name in zip(frame["source_hash"], frame.get("source_name", frame["source_hash"])):
                sources.setdefault(source_hash, name)
    before = {source_hash: store.load_mask(source_hash) for source_hash in sources} if how is not None else {}
    masks = resolve_masks(store, sources, how or "auto", remake=how is not None)
    for source_hash, old in before.items():
        if old is not None and not np.array_equal(old, masks[source_hash]):
            for frame in frames:
                columns = [name for name in regional if name in frame.columns]
                if columns and not frame.empty:
                    frame.loc[frame["source_hash"] == source_hash, columns] = np.nan
    return masks
