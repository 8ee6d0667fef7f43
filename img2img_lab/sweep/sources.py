"""A sweep's sources: each image prepared for the model as the sweep feeds it, what a strength runs on it, and its
VAE floor (its round trip through the model's VAE: what strength 0 stores, about as close as outputs get to the
source; one per source and model).

:mod:`img2img_lab.sweep.run` re-exports these; :class:`img2img_lab.sweep.session.SweepSession` calls them in its
steps.

>>> prepare_source("data/sources/red_circle_on_blue.png", model).size  # the embedded model's native 64 px
(64, 64)
"""

from __future__ import annotations

import platform
import sys
import warnings

from img2img_lab.images.hashes import content_hash
from img2img_lab.images.intake import SmallSourceWarning, load_image
from img2img_lab.store.manifest import package_versions
from img2img_lab.models.handle import ModelHandle
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.plan.schema import is_missing
from img2img_lab.store.run_store import RunStore


def prepare_source(path, model: ModelHandle, *, max_side="native", resize_policy: str = "crop"):
    """Load one source image sized for the model exactly as a sweep does (see :mod:`img2img_lab.images`).

    >>> prepare_source("data/sources/red_circle_on_blue.png", model, max_side=32).size
    (32, 32)
    """
    native = model.native_resolution()
    max_side = native if max_side == "native" else max_side
    warn_below = min(256, native) if native else 256
    with warnings.catch_warnings():
        warnings.simplefilter("always", SmallSourceWarning)
        return load_image(path, size_multiple=model.size_multiple(), max_side=max_side, policy=resize_policy,
                          warn_below=warn_below)


def source_fit(path, model: ModelHandle, *, max_side="native", resize_policy: str = "crop") -> dict | None:
    """How :func:`prepare_source` sized a source file for the pipeline (its original size, ``max_side``,
    ``size_multiple``, ``policy``): a mask file of that source is fitted the same way (:mod:`img2img_lab.metrics.masks`)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            original = ImageOps.exif_transpose(image).size
    except (OSError, TypeError, AttributeError):  # bytes, arrays or uploads: no file to fit a mask to
        return None
    native = model.native_resolution()
    return {"original": list(original), "max_side": native if max_side == "native" else max_side,
            "size_multiple": model.size_multiple(), "policy": resize_policy}


def prepare_sources(plan: SweepPlan, model: ModelHandle) -> list:
    """Load every source image of the plan, sized for the model (see :func:`prepare_source`)."""
    return [prepare_source(path, model, max_side=plan.max_side, resize_policy=plan.resize_policy)
            for path in plan.images]


def folder_sources(plan: SweepPlan, store) -> tuple[list, list[dict]]:
    """The plan's sources as the run folder keeps them (``sources/<hash>.png``, found through the manifest's record of
    each path), with their recorded entries: what a repair sweeps, so it never reads a file outside the folder. A
    :class:`~img2img_lab.errors.PlanError` names a source the folder has no intact copy of.

    >>> images, entries = folder_sources(plan, store)
    >>> images[0].size, entries[0]["hash"] == content_hash(images[0])
    ((64, 64), True)
    """
    from img2img_lab.errors import PlanError, StoreError
    from img2img_lab.store.folder_rules import is_pixel_hash

    recorded = {entry.get("path"): entry for entry in store.read_manifest().get("sources") or []
                if isinstance(entry, dict) and is_pixel_hash(entry.get("hash"))}
    images, entries = [], []
    for path in plan.images:
        entry = recorded.get(path)
        try:
            image = store.load_source(entry["hash"]) if entry is not None else None
        except StoreError:
            image = None
        if image is None or content_hash(image) != entry["hash"]:
            raise PlanError(f"source {path}: the run folder keeps no intact copy of it in sources/ (a repair uses only "
                            f"what the folder holds)")
        images.append(image)
        entries.append({**entry, "path": path})
    return images, entries


def source_steps(model, sources: list):
    """``steps(scheduler, num_inference_steps, strength, image_index, mode)`` for :meth:`SweepPlan.cells`: what a
    strength runs on ``model`` for the source at ``image_index`` (FLUX.1's grid depends on the image size).

    >>> cells = plan.cells(steps=source_steps(model, sources))
    >>> [(cell.strength, cell.executed_steps) for cell in cells[:3]]
    [(0.0, 0), (0.5, 5), (1.0, 10)]
    """
    def steps(scheduler: str, num_inference_steps: int, strength: float, image_index: int, mode: str = "img2img"):
        source = sources[image_index]
        return model.for_mode(mode).step_plan(scheduler, num_inference_steps, strength, width=source.width,
                                              height=source.height)

    return steps


def write_floor(store: RunStore, model: ModelHandle, sources: list, source_hashes: list[str], seed: int,
                metrics: list[str], *, references=None) -> None:
    """Store each source's VAE round trip — one per source and model, the latent sampled with ``seed`` (a sweep passes
    its plan's first seed) — in ``floor/`` and ``floor.parquet``, measured if asked (on the model's device;
    ``references``, a :class:`~img2img_lab.metrics.fidelity.ReferenceCache`, keeps each source's side for the cells).
    A round trip the folder holds already (from an earlier sweep, with any seed) is kept, and measured now for the
    metrics it lacks (made again if its image does not hold the pixels its row records); one the model handle made
    for another sweep is reused (:meth:`~img2img_lab.models.handle.ModelHandle.floor`).

    >>> write_floor(store, model, sources, [row["source_hash"]], 1, ["ssim", "delta_e"])  # runs/demo: ssim, psnr
    >>> floor = store.read_floor()
    >>> floor["seed"].tolist(), bool(floor["delta_e"].notna().all())  # seed 0's floor was there: kept and measured
    ([0], True)
    """
    import pandas as pd

    fingerprint = model.fingerprint()["fingerprint"]
    floor = store.read_floor()
    if len(floor) and "model_fingerprint" not in floor.columns:  # older single-model folders: this model's floor
        floor["model_fingerprint"] = fingerprint
    kept = {(row["source_hash"], row["seed"], row["model_fingerprint"]): row for row in floor.to_dict("records")
            if (store.root / row["output_path"]).is_file()}
    names = [name for name in metrics if not metric_needs(name, "prompt", "mask")]
    for source, source_hash in zip(sources, source_hashes):
        rows = [row for (held, _, made_by), row in kept.items() if (held, made_by) == (source_hash, fingerprint)]
        for row in rows or [None]:
            _floor_row(store, model, kept, row, source, source_hash, seed, names, references)
    store.write_floor(pd.DataFrame(list(kept.values())))


def _floor_row(store: RunStore, model: ModelHandle, kept: dict, row, source, source_hash: str, seed: int,
               names: list[str], references) -> None:
    """Keep (and measure what it lacks) or make one floor row of a source."""
    from img2img_lab.metrics.availability import metric_status
    from img2img_lab.metrics.measure import measure_pair

    image, missing = None, names
    if row is not None:  # an earlier sweep's round trip: the metrics it was not measured with (and can be now)
        missing = [name for name in names if is_missing(row.get(name)) and metric_status(name)[0]]
        image = store.intact_output(row) if missing else None
        if missing and image is None:
            row, missing, seed = None, names, int(row["seed"])
    if row is None:
        fingerprint = model.fingerprint()["fingerprint"]
        image = model.floor(source, source_hash, seed)
        path = store.floor_path(source_hash, seed, fingerprint)
        store.write_png(path, image)
        row = kept[(source_hash, seed, fingerprint)] = {
            "source_hash": source_hash, "seed": seed, "model_fingerprint": fingerprint,
            "output_path": str(path.relative_to(store.root)), "output_hash": content_hash(image)}
    if missing:
        row.update(measure_pair(source, image, missing, device=str(model.device), references=references))


def metric_needs(name: str, *what: str) -> bool:
    """Whether metric ``name`` needs any of ``what`` (``"prompt"``, ``"mask"``: region metrics are measured on the
    folder at the end of a sweep, with the sources' masks)."""
    from img2img_lab.metrics.registry import metric_spec

    spec = metric_spec(name)
    return any(getattr(spec, f"needs_{item}") for item in what)


def build_manifest(plan, model: ModelHandle, sources: list, *, started: str, recorded_sources: list | None = None) -> dict:
    """The manifest of one sweep (before it is merged into the folder's, see :mod:`img2img_lab.store.manifest`);
    ``recorded_sources``: the folder's own entries of sources taken from it (a repair reads no outside file)."""
    import torch

    pipe = model.pipe
    return {
        "format": "img2img-lab run folder v1",
        "created": started,
        "plan": plan.to_dict(),
        "cells_planned": len(plan.cells()),
        "model": model.label,
        "model_fingerprint": model.fingerprint(),
        "model_family": model.family_summary(),
        "device": str(model.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "torch_threads_reason": model.threads_reason,
        "packages": package_versions(),
        "platform": platform.platform(),
        "command": sys.argv,
        "sources": recorded_sources or [
            {"path": path, "hash": content_hash(image), "width": image.width, "height": image.height,
             "fit": source_fit(path, model, max_side=plan.max_side, resize_policy=plan.resize_policy)}
            for path, image in zip(plan.images, sources)
        ],
        "notes": [],
    }
