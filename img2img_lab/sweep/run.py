"""Run a sweep plan into a run folder: plan -> engine -> store.

:func:`run_sweep` loads the model and the sources, expands the plan, and for each cell either finds it
already in the run folder (resume / extension), reuses the image of the strength it duplicates, or runs
it with the reference runner; after every cell the image and the table row are written atomically.

Each cell has a content key (:func:`img2img_lab.plan.schema.cell_key`): a hash of everything that determines its pixels, so
rerunning a sweep, or extending it by a strength or a seed, computes only what is missing.

>>> quick = SweepPlan.from_yaml("data/configs/quick.yaml")
>>> plan = SweepPlan(images=quick.images, prompts=quick.prompts, strengths=[0.0, 0.5], steps=10)
>>> table = run_sweep(plan, "runs/quick", pipe=pipe, progress=False)
>>> table[["strength", "executed_steps", "produced"]]
   strength  executed_steps       produced
0       0.0               0  vae_roundtrip
1       0.5               5      diffusion
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from img2img_lab.sweep import distributed
from img2img_lab.errors import PlanError, StoreError
from img2img_lab.images.intake import check_image_files
from img2img_lab.store.manifest import files_digest, package_versions, registered_models  # noqa: F401 - re-exported
from img2img_lab.models.handle import ModelHandle, as_model
from img2img_lab.models.loading import load_model, resolve_model
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.store.run_store import RunStore
from img2img_lab.plan.schema import COLUMNS, cell_key  # noqa: F401 - re-exported
from img2img_lab.sweep.sources import prepare_source, prepare_sources, source_steps, write_floor  # noqa: F401
from img2img_lab.sweep.options import SweepOptions
from img2img_lab.sweep.session import SweepSession, build_manifest, completed_record, in_plan_order  # noqa: F401

__all__ = ["COLUMNS", "cell_key", "package_versions", "prepare_source", "prepare_sources", "registered_models",
           "run_model_axis", "run_sweep", "source_steps", "sweep_signature", "write_floor"]

def _file_stats(folder: Path) -> list:
    return sorted((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
                  for path in folder.rglob("*") if path.is_file())


def sweep_signature(plan: SweepPlan, options: SweepOptions) -> str | None:
    """A hash of everything a finished sweep's cells depend on that can be known without loading the model:
    the plan, the request (metrics, engine, device, dtype), the model folder's files (paths, sizes, mtimes),
    the source files' sizes and mtimes, and the package versions. ``None`` for hub models (not a local folder)."""

    label, folder = resolve_model(plan.model)
    if folder is None:
        return None
    sources = []
    for image in plan.images:
        try:
            stat = Path(image).stat()
        except OSError:
            return None  # the normal path reports the missing or unreadable source with its fix
        sources.append((image, stat.st_size, stat.st_mtime_ns))
    payload = {"plan": plan.to_dict(), "metrics": sorted(options.metrics), "engine": options.engine,
               "max_batch_size": options.max_batch_size, "device": options.device, "dtype": options.dtype,
               "memory": options.memory.record(),
               "model": [label, str(folder), _file_stats(Path(folder))],
               "sources": sources, "packages": package_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def finished_run(out_dir, *, signature: str | None):
    """``(table, store)`` of a run folder that already holds this exact sweep, finished and untouched (the store
    opened once, for the caller to record the answer in); ``(None, store or None)`` otherwise."""
    if signature is None or not RunStore.is_run_folder(out_dir):
        return None, None
    store = RunStore.open(out_dir)
    return finished_table(store, signature=signature), store


def finished_table(store: RunStore, *, signature: str):
    """The table of an open run folder that already holds this exact sweep, finished and untouched; else ``None``.

    This is how rerunning a finished sweep answers without loading the model: the manifest's ``completed``
    record must carry the same :func:`sweep_signature` and the same :func:`~img2img_lab.store.manifest.files_digest`
    (every image, row file and source still there with the size and time it had when the sweep finished).
    """
    completed = (store.read_manifest_or_none() or {}).get("completed") or {}
    keys = completed.get("keys") or []
    if completed.get("signature") != signature or not keys:
        return None
    if files_digest(store, keys, completed.get("sources") or []) != completed.get("files"):
        return None
    table = store.read_table(allow_damaged=True)
    if table.empty:
        return None
    table = in_plan_order(table, keys)
    return table if len(table) == len(keys) else None


def _answered_from_run_folder(store: RunStore, cells: int) -> None:
    """Record in the manifest that a rerun found the sweep finished and generated nothing."""
    counts = {"generated": 0, "reused": 0, "already_done": cells, "cells": cells, "seconds": 0.0,
              "answered_from_run_folder": True}
    store.update_manifest(lambda manifest: {**manifest, "counts": counts})


def run_model_axis(plan: SweepPlan, out_dir: str | os.PathLike, options: SweepOptions):
    """Run a plan with a ``models`` axis into one run folder: each model loaded in turn (one in memory at a time),
    every cell run on each; returns the combined table (models in plan order). :func:`run_sweep` calls it for a
    plan with ``models``.

    Rerunning a finished multi-model sweep answers from the run folder without loading any model.

    >>> from img2img_lab.models.registry import tiny_pipeline
    >>> tiny_pipeline("sd1").save_pretrained("tiny-sd")
    >>> tiny = "tiny-sd"
    >>> plan = SweepPlan(images=["data/sources/red_circle_on_blue.png"], prompts=["a star"], strengths=[0.5],
    ...                  models=["embedded", tiny], steps=4)
    >>> run_sweep(plan, "runs/compare", progress=False).groupby("model").size().tolist()
    [1, 1]
    """
    import gc

    import pandas as pd
    import torch

    parts = [sweep_signature(sub, options) for sub in plan.model_plans()]
    signature = None if None in parts else hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    done, store = finished_run(out_dir, signature=signature)
    if done is not None:
        _answered_from_run_folder(store, len(done))
        return done
    tables, counts = [], {}
    for sub in plan.model_plans():
        table, store = _sweep_one_model(sub, out_dir, options, model=None, allow_other_models=True)
        tables.append(table)
        for name, value in (store.read_manifest().get("counts") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                counts[name] = counts.get(name, 0) + value
        gc.collect()  # the model of this part is released before the next one loads
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    table = pd.concat(tables, ignore_index=True)
    context = distributed.current()
    if context.is_main:  # in a launched job rank 0 alone writes the manifest
        completed = completed_record(store, signature, list(table["cell_key"]), table["source_hash"])
        store.update_manifest(lambda manifest: {
            **manifest, "plan": plan.to_dict(), "cells_planned": len(table), "completed": completed,
            "counts": {**counts, "cells": len(table), "models": len(tables)}})
    distributed.barrier(context)
    return table


def run_sweep(plan: SweepPlan, out_dir: str | os.PathLike, *, pipe=None, device: str | None = None,
              dtype: str | None = None, progress: bool = True, metrics=(), on_step=None, engine: str = "batched",
              max_batch_size: int | None = None, cache: str | os.PathLike | None = None, model_axis: bool = False,
              sources_from_folder: bool = False, progress_label: str | None = None, memory=None):
    """Run every cell of ``plan`` into the run folder ``out_dir``; return the results table.

    Cells already in the folder (an intact image with the pixels its row records) are skipped (resume and
    extension); a damaged one is regenerated; duplicate strengths reuse the image of the strength they duplicate;
    zero-step cells store the VAE round trip. The table has one row per cell with the columns in
    :data:`COLUMNS`, plus one column per metric in ``metrics`` (measured as the sweep goes, see
    :mod:`img2img_lab.metrics.measure`). Each source's VAE round trip (the fidelity floor) is stored once per source
    and model in ``floor/`` and ``floor.parquet``. ``on_step(done, total)`` is called after every denoising step of every
    generated cell (see :func:`img2img_lab.engine.per_cell.run_cell`).

    ``engine="batched"`` (default) runs cells with :mod:`img2img_lab.engine.batched` (same pixels within 1/255 in float32,
    several times faster) where the pipeline supports it, else per cell; ``engine="per-cell"`` forces the
    reference runner. ``max_batch_size`` caps UNet samples per call (default by device). The manifest's
    ``engine`` entry records which ran and why.

    ``cache`` names a shared cache folder (``images/<key>.png`` + ``rows/<key>.json``, the run folder's own
    layout): intact cells found there are copied in instead of generated, and every cell this folder stores is
    added to it, image and row together, under the cache's lock, so several run folders (and concurrent sweeps)
    share one set of computed cells.

    ``memory`` (a mapping, or :class:`~img2img_lab.plan.memory_settings.MemoryControls`) holds memory controls —
    ``offload``, ``vae_tiling``, ``vae_slicing``, ``attention_slicing``, ``memory_budget`` — over the plan's
    ``memory:`` settings; the manifest records them, and those that can change pixels enter the cell key.

    ``sources_from_folder`` takes the sources from the copies ``out_dir`` keeps instead of the plan's files (what
    ``verify --repair`` does: it reads nothing outside the folder).

    A plan with a ``models`` axis is handed to :func:`run_model_axis`. A folder holding another model's cells is
    refused unless ``model_axis`` (set by :func:`run_model_axis`): one folder compares models only by plan.

    >>> table = run_sweep(plan, "runs/study", pipe=pipe, progress=False)
    >>> table.groupby("strength").executed_steps.first().tolist()
    [0, 5, 10]
    """
    # 1. Check the request (the sources exist before any model loads).
    given = memory.record() if hasattr(memory, "record") else (memory or {})
    options = SweepOptions(device=device, dtype=dtype, progress=progress, metrics=metrics, on_step=on_step,
                           engine=engine, max_batch_size=max_batch_size, cache=cache,
                           sources_from_folder=sources_from_folder, progress_label=progress_label,
                           memory={**(plan.memory or {}), **given}).checked()
    if plan.models:
        if pipe is not None:
            raise PlanError("a plan with 'models' loads each model itself. Fix: do not pass pipe=, or give the plan "
                            "one model.")
        return run_model_axis(plan, out_dir, options)
    model = None if pipe is None else as_model(pipe)  # at the door: a caller's pipeline becomes its handle
    return _sweep_one_model(plan, out_dir, options, model=model, allow_other_models=model_axis)[0]


def _sweep_one_model(plan: SweepPlan, out_dir, options: SweepOptions, *, model: ModelHandle | None,
                     allow_other_models: bool):
    """Steps 1–8 of :func:`run_sweep` for one model; returns ``(table, open run store)``."""
    if not options.sources_from_folder:
        check_image_files(plan.images)
    cache_store = _open_cache(options.cache)
    # 2. A rerun of a finished sweep answers from the run folder, without loading the model (rank 0 decides).
    context, signature = distributed.current(), None
    if model is None:
        signature = sweep_signature(plan, options)
        done, store = _finished_for_every_rank(out_dir, signature, context)
        if done is not None:
            return done, store
    # 3. Load the model, each rank on its own device (a hub model: rank 0 first, it fills the cache the others read).
    if model is None:
        device = distributed.rank_device(context, options.device)
        model = distributed.load_model(context, lambda: load_model(plan.model, device=device, dtype=options.dtype),
                                       local=resolve_model(plan.model)[1] is not None)
    # 4. Create (rank 0) or open the run folder, key every cell (done, in the cache, a duplicate strength, or to
    #    generate) and 5. copy intact cells from the shared cache (rank 0).
    session = distributed.main_first(context, lambda: _open_and_key(
        plan, out_dir, model, options, context=context, cache_store=cache_store,
        allow_other_models=allow_other_models))
    # 6. Generate the rest (in a launched job, each rank its shard of the chunks).
    session.generate()
    # 7. Reuse duplicate strengths, 8. measure rows from earlier runs and record the finished sweep (rank 0).
    return _finish(session, signature, context), session.store


def _open_and_key(plan, out_dir, model, options, *, context, cache_store, allow_other_models) -> SweepSession:
    with model.steady():  # the device and the fingerprint, each worked out once
        session = SweepSession.open(plan, out_dir, model, options, context=context, cache_store=cache_store,
                                    allow_other_models=allow_other_models)
        session.key_cells()
    if context.is_main:
        session.copy_from_cache()
    session.note_recorded_batches()  # inside main_first: no rank has begun to write batches
    return session


def _finished_for_every_rank(out_dir, signature, context):
    """:func:`finished_run`, decided by rank 0 for every rank (they must take the same path)."""
    done, store = finished_run(out_dir, signature=signature) if context.is_main else (None, None)
    if not distributed.agree(context, done is not None):
        return None, None
    if context.is_main:
        _answered_from_run_folder(store, len(done))
    distributed.barrier(context)
    return (done, store) if context.is_main else finished_run(out_dir, signature=signature)


def _finish(session: SweepSession, signature, context):
    """After every rank stored its cells: rank 0 reuses duplicates, consolidates and records; every rank returns the
    plan's rows in plan order."""
    if not context.is_main:
        session.counts["already_done"] = 0  # every rank counted the cells done before the job; rank 0's count stands
    session.counts = distributed.sum_counts(context, session.counts)  # the job's counts, on every rank
    if context.is_main:
        session.store.reload()  # other ranks' and concurrent writers' row files
        session.show_job_progress(final=True)
        session.reuse_duplicates()
        table = session.finish(signature)
    distributed.barrier(context)
    if not context.is_main:
        table = session.plan_table()
    return table


def _open_cache(cache) -> RunStore | None:
    if cache is None:
        return None
    path = Path(cache)
    if path.exists() and not path.is_dir():
        raise StoreError(f"--cache '{cache}' is a file, not a folder. Fix: pass a folder (it is created if it is "
                         f"missing).")
    return RunStore(path)
