"""Run a sweep plan into a run folder: plan -> engine -> store.

:func:`run_sweep` loads the model and the sources, expands the plan, and for each cell either finds it
already in the run folder (resume / extension), reuses the image of the strength it duplicates, or runs
it with the reference runner; after every cell the image and the table row are written atomically.

Each cell has a content key (:func:`cell_key`): a hash of everything that determines its pixels, so
rerunning a sweep, or extending it by a strength or a seed, computes only what is missing.

>>> table = run_sweep(SweepPlan.from_yaml("data/configs/quick.yaml"), "runs/quick")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import img2img_lab
from img2img_lab.engine import cell_generator, run_cell, use_scheduler, vae_roundtrip
from img2img_lab.errors import PlanError, StoreError
from img2img_lab.images import SmallSourceWarning, content_hash, load_image
from img2img_lab.models import as_model
from img2img_lab.pipelines import load_pipeline, model_fingerprint, model_label, native_resolution, size_multiple
from img2img_lab.plan import Cell, SweepPlan
from img2img_lab.store import RunStore, atomic_write

#: Columns of results.parquet, in order (metrics are appended by img2img_lab.metrics).
COLUMNS = [
    "cell_key", "source", "source_name", "source_hash", "prompt", "negative_prompt", "strength", "seed",
    "guidance_scale", "num_inference_steps", "scheduler", "width", "height", "init_steps", "executed_steps",
    "t_start", "unet_evaluations", "start_timestep", "timesteps", "sigma", "log_snr", "sqrt_alpha_bar",
    "flow_sigma", "zero_step", "duplicate_of", "produced", "seconds", "output_path", "output_hash", "nsfw_flagged",
    "model", "model_family", "model_fingerprint", "device", "dtype", "engine", "batch_id",
]


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a run's pixels and tables."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "img2img_lab": img2img_lab.__version__}
    for name in ("torch", "torchvision", "diffusers", "transformers", "numpy", "pillow", "pandas", "pyarrow",
                 "scikit-image", "lpips", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cell_key(cell: Cell, *, fingerprint: str, scheduler_config: dict, source_hash: str, width: int, height: int,
             dtype: str, device_type: str, versions: dict[str, str], engine: str = "per-cell") -> str:
    """A 20-hex-digit content key over everything that determines a cell's pixels.

    The batched engine's pixels match the per-cell runner's within 1/255, not bit for bit, so its cells are
    keyed (and cached) separately: ``engine`` enters the key unless it is the per-cell reference.

    >>> len(cell_key(cell, fingerprint="f", scheduler_config={}, source_hash="h", width=64, height=64,
    ...              dtype="float32", device_type="cpu", versions={}))  # doctest: +SKIP
    20
    """
    payload = {
        "model": fingerprint,
        "scheduler": cell.scheduler,
        "scheduler_config": {key: value for key, value in scheduler_config.items() if not key.startswith("_")},
        "source": source_hash,
        "prompt": cell.prompt,
        "negative_prompt": cell.negative_prompt,
        "strength": repr(float(cell.strength)),
        "steps": cell.num_inference_steps,
        "guidance_scale": repr(float(cell.guidance_scale)),
        "seed": cell.seed,
        "size": [width, height],
        "dtype": dtype,
        "device_type": device_type,
        "torch": versions.get("torch"),
        "diffusers": versions.get("diffusers"),
    }
    if engine != "per-cell":
        payload["engine"] = engine
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def prepare_source(path, pipe, *, max_side="native", resize_policy: str = "crop"):
    """Load one source image sized for the pipeline exactly as a sweep does (see :mod:`img2img_lab.images`).

    >>> source = prepare_source("data/sources/red_circle_on_blue.png", pipe)  # doctest: +SKIP
    """
    native = native_resolution(pipe)
    max_side = native if max_side == "native" else max_side
    warn_below = min(256, native) if native else 256
    with warnings.catch_warnings():
        warnings.simplefilter("always", SmallSourceWarning)
        return load_image(path, size_multiple=size_multiple(pipe), max_side=max_side, policy=resize_policy,
                          warn_below=warn_below)


def prepare_sources(plan: SweepPlan, pipe) -> list:
    """Load every source image of the plan, sized for the pipeline (see :func:`prepare_source`)."""
    return [prepare_source(path, pipe, max_side=plan.max_side, resize_policy=plan.resize_policy)
            for path in plan.images]


def source_steps(model, sources: list):
    """``steps(scheduler, num_inference_steps, strength, image_index)`` for :meth:`SweepPlan.cells`: what a
    strength runs on ``model`` for the source at ``image_index`` (FLUX.1's grid depends on the image size).

    >>> cells = plan.cells(steps=source_steps(as_model(pipe), sources))  # doctest: +SKIP
    """
    def steps(scheduler: str, num_inference_steps: int, strength: float, image_index: int):
        source = sources[image_index]
        return model.step_plan(scheduler, num_inference_steps, strength, width=source.width, height=source.height)

    return steps


def build_manifest(plan: SweepPlan, pipe, sources: list, *, started: str) -> dict:
    import torch

    return {
        "format": "img2img-lab run folder v1",
        "created": started,
        "plan": plan.to_dict(),
        "cells_planned": len(plan.cells()),
        "model": model_label(pipe),
        "model_fingerprint": model_fingerprint(pipe),
        "model_family": as_model(pipe).describe(),
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "command": sys.argv,
        "sources": [
            {"path": path, "hash": content_hash(image), "width": image.width, "height": image.height}
            for path, image in zip(plan.images, sources)
        ],
        "notes": [],
    }


def write_floor(store: RunStore, pipe, sources: list, source_hashes: list[str], seeds: list[int],
                metrics: list[str]) -> None:
    """Store each source's VAE round trip per seed and model (``floor/``, ``floor.parquet``), measured if asked."""
    import pandas as pd

    from img2img_lab.metrics import measure_pair

    fingerprint = model_fingerprint(pipe)["fingerprint"]
    floor = store.read_floor()
    if len(floor) and "model_fingerprint" not in floor.columns:  # older single-model folders: this model's floor
        floor["model_fingerprint"] = fingerprint
    done = {(row["source_hash"], row["seed"], row["model_fingerprint"]) for row in floor.to_dict("records")
            if (store.root / row["output_path"]).is_file()}
    rows = [row for row in floor.to_dict("records")
            if (row["source_hash"], row["seed"], row["model_fingerprint"]) in done]
    for source, source_hash in zip(sources, source_hashes):
        for seed in seeds:
            if (source_hash, seed, fingerprint) in done:
                continue
            image = vae_roundtrip(pipe, source, generator=cell_generator(seed))
            path = store.floor_path(source_hash, seed, fingerprint)
            atomic_write(path, lambda stream: image.save(stream, format="PNG"), temp_dir=store.temp_dir)
            row = {"source_hash": source_hash, "seed": seed, "model_fingerprint": fingerprint,
                   "output_path": str(path.relative_to(store.root)), "output_hash": content_hash(image)}
            row.update(measure_pair(source, image, [name for name in metrics if not _needs_prompt(name)]))
            rows.append(row)
    store.write_floor(pd.DataFrame(rows))


def _needs_prompt(name: str) -> bool:
    from img2img_lab.metrics import METRICS

    return METRICS[name].needs_prompt


def _file_stats(folder: Path) -> list:
    return sorted((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
                  for path in folder.rglob("*") if path.is_file())


def sweep_signature(plan: SweepPlan, *, metrics, engine: str, max_batch_size, device, dtype) -> str | None:
    """A hash of everything a finished sweep's cells depend on that can be known without loading the model:
    the plan, the request (metrics, engine, device, dtype), the model folder's files (paths, sizes, mtimes),
    the source files' sizes and mtimes, and the package versions. ``None`` for hub models (not a local folder)."""
    from img2img_lab.pipelines import resolve_model

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
    payload = {"plan": plan.to_dict(), "metrics": sorted(metrics), "engine": engine, "max_batch_size": max_batch_size,
               "device": device, "dtype": dtype, "model": [label, str(folder), _file_stats(Path(folder))],
               "sources": sources, "packages": package_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def finished_table(out_dir, *, signature: str | None):
    """The table of a run folder that already holds this exact sweep, finished; else ``None``.

    This is how rerunning a finished sweep answers without loading the model: the manifest's ``completed``
    record must carry the same :func:`sweep_signature`, and every cell's row file and image must exist.
    """
    manifest_path = Path(out_dir) / "manifest.json"
    if signature is None or not manifest_path.is_file():
        return None
    store = RunStore.open(out_dir)
    completed = store.read_manifest().get("completed") or {}
    if completed.get("signature") != signature:
        return None
    keys = completed.get("keys") or []
    if not keys or not all(store.row_path(key).is_file() and store.image_path(key).is_file() for key in keys):
        return None
    table = _in_plan_order(store.read_table(), keys)
    return table if len(table) == len(keys) else None


def _in_plan_order(table, keys: list[str]):
    """The rows of ``keys`` in that order, columns in :data:`COLUMNS` order (metrics after)."""
    order = {key: index for index, key in enumerate(keys)}
    table = table[table["cell_key"].isin(order)]
    table = table.iloc[table["cell_key"].map(order).argsort()].reset_index(drop=True)
    return table[[column for column in COLUMNS if column in table.columns]
                 + [column for column in table.columns if column not in COLUMNS]]


def registered_models(manifest: dict) -> list[dict]:
    """The models whose cells a run folder holds: ``[{spec, model, fingerprint, family}]`` (older folders: one)."""
    if manifest.get("models"):
        return list(manifest["models"])
    fingerprint = (manifest.get("model_fingerprint") or {}).get("fingerprint")
    if not fingerprint:
        return []
    return [{"spec": (manifest.get("plan") or {}).get("model"), "model": manifest.get("model"),
             "fingerprint": fingerprint, "family": (manifest.get("model_family") or {}).get("family")}]


def _register(registry: list[dict], entry: dict) -> list[dict]:
    return [item for item in registry if item["fingerprint"] != entry["fingerprint"]] + [entry]


def _answered_from_run_folder(out_dir, cells: int) -> None:
    """Record in the manifest that a rerun found the sweep finished and generated nothing."""
    store = RunStore.open(out_dir)
    manifest = store.read_manifest()
    manifest["counts"] = {"generated": 0, "reused": 0, "already_done": cells, "cells": cells, "seconds": 0.0,
                          "answered_from_run_folder": True}
    store.write_manifest(manifest)


def run_model_axis(plan: SweepPlan, out_dir: str | os.PathLike, **options):
    """Run a plan with a ``models`` axis into one run folder: each model loaded in turn (one in memory at a time),
    every cell run on each; returns the combined table (models in plan order). ``options`` as for :func:`run_sweep`.

    Rerunning a finished multi-model sweep answers from the run folder without loading any model.

    >>> table = run_model_axis(SweepPlan(..., models=["embedded", "./sdxl"]), "runs/compare")  # doctest: +SKIP
    """
    import gc

    import pandas as pd
    import torch

    from img2img_lab.metrics import check_metric_names

    if options.pop("pipe", None) is not None:
        raise PlanError("a plan with 'models' loads each model itself. Fix: do not pass pipe=, or give the plan "
                        "one model.")
    metrics = check_metric_names(options.get("metrics", ()))
    parts = [sweep_signature(sub, metrics=metrics, engine=options.get("engine", "batched"),
                             max_batch_size=options.get("max_batch_size"), device=options.get("device"),
                             dtype=options.get("dtype")) for sub in plan.model_plans()]
    signature = None if None in parts else hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    done = finished_table(out_dir, signature=signature)
    if done is not None:
        _answered_from_run_folder(out_dir, len(done))
        return done
    tables, counts = [], {}
    for sub in plan.model_plans():
        tables.append(run_sweep(sub, out_dir, model_axis=True, **options))
        for name, value in RunStore.open(out_dir).read_manifest().get("counts", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                counts[name] = counts.get(name, 0) + value
        gc.collect()  # the model of this part is released before the next one loads
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    table = pd.concat(tables, ignore_index=True)
    store = RunStore.open(out_dir)
    manifest = store.read_manifest()
    manifest["plan"] = plan.to_dict()
    manifest["cells_planned"] = len(table)
    manifest["counts"] = {**counts, "cells": len(table), "models": len(tables)}
    manifest["completed"] = {"signature": signature, "keys": list(table["cell_key"])} if signature else None
    store.write_manifest(manifest)
    return table


def run_sweep(plan: SweepPlan, out_dir: str | os.PathLike, *, pipe=None, device: str | None = None,
              dtype: str | None = None, progress: bool = True, metrics=(), on_step=None, engine: str = "batched",
              max_batch_size: int | None = None, cache: str | os.PathLike | None = None, model_axis: bool = False):
    """Run every cell of ``plan`` into the run folder ``out_dir``; return the results table.

    Cells already in the folder are skipped (resume and extension); duplicate strengths reuse the image
    of the strength they duplicate; zero-step cells store the VAE round trip. The table has one row per
    cell with the columns in :data:`COLUMNS`, plus one column per metric in ``metrics`` (measured as the
    sweep goes, see :mod:`img2img_lab.metrics`). Each source's VAE round trip (the fidelity floor) is
    stored per seed in ``floor/`` and ``floor.parquet``. ``on_step(done, total)`` is called after every
    denoising step of every generated cell (see :func:`img2img_lab.engine.run_cell`).

    ``engine="batched"`` (default) runs cells with :mod:`img2img_lab.batched` (same pixels within 1/255,
    several times faster) where the pipeline supports it, else per cell; ``engine="per-cell"`` forces the
    reference runner. ``max_batch_size`` caps UNet samples per call (default by device). The manifest's
    ``engine`` entry records which ran and why.

    ``cache`` names a shared cache folder (``images/<key>.png`` + ``rows/<key>.json``, the run folder's own
    layout): cells found there are copied in instead of generated, and every generated cell is added to it,
    under the cache's lock, so several run folders (and concurrent sweeps) share one set of computed cells.

    A plan with a ``models`` axis is handed to :func:`run_model_axis`. A folder holding another model's cells is
    refused unless ``model_axis`` (set by :func:`run_model_axis`): one folder compares models only by plan.

    >>> table = run_sweep(plan, "runs/study", pipe=load_pipeline())  # doctest: +SKIP
    >>> table.groupby("strength").executed_steps.first()  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if plan.models:
        return run_model_axis(plan, out_dir, pipe=pipe, device=device, dtype=dtype, progress=progress,
                              metrics=metrics, on_step=on_step, engine=engine, max_batch_size=max_batch_size,
                              cache=cache)

    from img2img_lab.metrics import check_metric_names, measure_pair, metric_status

    metrics = check_metric_names(metrics)
    if engine not in ("batched", "per-cell"):
        raise PlanError(f"unknown engine {engine!r}. Fix: use 'batched' (default) or 'per-cell'.")
    signature = None
    if pipe is None:  # a rerun of a finished sweep answers from the run folder, without loading the model
        signature = sweep_signature(plan, metrics=metrics, engine=engine, max_batch_size=max_batch_size,
                                    device=device, dtype=dtype)
        done = finished_table(out_dir, signature=signature)
        if done is not None:
            _answered_from_run_folder(out_dir, len(done))
            return done
    if pipe is None:
        pipe = load_pipeline(plan.model, device=device, dtype=dtype)
    model = as_model(pipe)
    family_notes = model.check_plan(plan)
    sources = prepare_sources(plan, pipe)
    fingerprint = model_fingerprint(pipe)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out_dir = Path(out_dir)
    manifest = build_manifest(plan, pipe, sources, started=started)
    manifest["notes"] += family_notes
    registry = []
    if (out_dir / "manifest.json").is_file():
        previous = RunStore.open(out_dir).read_manifest()
        registry = registered_models(previous)
        known = {entry["fingerprint"] for entry in registry}
        if known and fingerprint["fingerprint"] not in known and not model_axis:
            others = ", ".join(f"{entry['model']} ({entry['fingerprint'][:12]})" for entry in registry)
            raise StoreError(
                f"'{out_dir}' holds a run of another model ({others}); this sweep uses {model_label(pipe)} "
                f"({fingerprint['fingerprint'][:12]}). Fix: choose a new --out folder, or compare the models in "
                f"one folder with `models: [A, B]` in the config."
            )
        manifest["created"] = previous.get("created", started)
        manifest["history"] = previous.get("history", []) + [{"started": started, "command": sys.argv}]
    manifest["models"] = _register(registry, {"spec": plan.model, "model": model_label(pipe),
                                              "fingerprint": fingerprint["fingerprint"], "family": model.family.name})
    for name in metrics:
        available, explanation = metric_status(name)
        if not available:
            manifest["notes"].append(f"{explanation} (recorded as NaN)")
    store = RunStore.create(out_dir, manifest)
    for source_hash, source in zip((entry["hash"] for entry in manifest["sources"]), sources):
        store.write_source(source_hash, source)

    versions = manifest["packages"]
    dtype_name = manifest["dtype"]
    device_type = pipe.device.type
    source_hashes = [entry["hash"] for entry in manifest["sources"]]
    write_floor(store, pipe, sources, source_hashes, plan.seeds, metrics)
    steps_of = source_steps(model, sources)
    cells = plan.cells(steps=steps_of)
    keys: dict[tuple, str] = {}
    counts = {"generated": 0, "reused": 0, "already_done": 0}
    started_clock = time.perf_counter()

    batched, engine_reason = (engine == "batched"), "per-cell runner requested"
    if batched:
        from img2img_lab.batched import DEFAULT_MAX_BATCH, batching_supported, run_cells_batched

        batched, engine_reason = batching_supported(pipe)
    engine_used = "batched" if batched else "per-cell"
    manifest["engine"] = {"name": engine_used, "reason": engine_reason,
                          "max_batch_size": max_batch_size if batched else None}

    # Pass 1: every cell's content key; what is done, what duplicates another strength, what to generate.
    cache_store = RunStore(cache) if cache is not None else None  # a shared cache: images/ and rows/ by key
    from_cache: list[str] = []
    pending: list[tuple[Cell, str]] = []  # to generate
    planned: list[tuple[Cell, str]] = []  # every non-duplicate cell (fixes the batched runner's chunks)
    duplicates: list[tuple[Cell, str]] = []
    for cell in cells:
        use_scheduler(pipe, cell.scheduler)
        source = sources[cell.image_index]
        key = cell_key(cell, fingerprint=fingerprint["fingerprint"], scheduler_config=dict(pipe.scheduler.config),
                       source_hash=source_hashes[cell.image_index], width=source.width, height=source.height,
                       dtype=dtype_name, device_type=device_type, versions=versions, engine=engine_used)
        keys[(cell.group(), cell.strength)] = key
        if cell.duplicate_of is None:
            planned.append((cell, key))
        if store.has_cell(key):
            counts["already_done"] += 1
        elif cache_store is not None and cache_store.has_cell(key):
            from_cache.append(key)
        elif cell.duplicate_of is not None:
            duplicates.append((cell, key))
        else:
            pending.append((cell, key))

    def save(cell: Cell, key: str, image, produced: str, seconds: float, nsfw, batch_id: str | None = None) -> None:
        steps = steps_of(cell.scheduler, cell.num_inference_steps, cell.strength, cell.image_index)
        row = {
            "cell_key": key,
            "source": cell.image,
            "source_name": Path(cell.image).stem,
            "source_hash": source_hashes[cell.image_index],
            "prompt": cell.prompt,
            "negative_prompt": cell.negative_prompt,
            "strength": cell.strength,
            "seed": cell.seed,
            "guidance_scale": cell.guidance_scale,
            "num_inference_steps": cell.num_inference_steps,
            "scheduler": cell.scheduler,
            "width": image.width,
            "height": image.height,
            "init_steps": steps.executed_steps,
            "executed_steps": steps.executed_steps,
            "t_start": steps.t_start,
            "unet_evaluations": steps.denoiser_evaluations,
            "start_timestep": steps.start_timestep,
            "timesteps": steps.timesteps_text(),
            "sigma": steps.sigma,
            "log_snr": steps.log_snr,
            "sqrt_alpha_bar": steps.sqrt_alpha_bar,
            "flow_sigma": steps.flow_sigma,
            "zero_step": steps.zero_step,
            "duplicate_of": cell.duplicate_of,
            "produced": produced,
            "seconds": seconds,
            "output_path": str(store.image_path(key).relative_to(store.root)),
            "output_hash": content_hash(image),
            "nsfw_flagged": nsfw,
            "model": model_label(pipe),
            "model_family": model.family.name,
            "model_fingerprint": fingerprint["fingerprint"],
            "device": str(pipe.device),
            "dtype": dtype_name,
            "engine": engine_used,
            "batch_id": batch_id,
        }
        if metrics:
            row.update(measure_pair(sources[cell.image_index], image, metrics, prompt=cell.prompt,
                                    device=str(pipe.device)))
        if store.save_cell(key, image, row):
            counts["generated" if not produced.startswith("duplicate:") else "reused"] += 1
        else:  # a concurrent sweep into this folder stored it first; its image and row are kept
            counts["stored_by_another_writer"] = counts.get("stored_by_another_writer", 0) + 1
        if cache_store is not None:
            cache_store.save_cell(key, image, store.row(key))
        bar.update(1)

    bar = tqdm(total=len(cells), initial=counts["already_done"], desc=f"sweep {plan.name}", unit="cell",
               disable=not progress)
    # Cells another run already computed into the shared cache are copied in, not generated.
    for key in from_cache:
        from PIL import Image

        with Image.open(cache_store.image_path(key)) as cached:
            image = cached.convert("RGB")
        row = {**cache_store.row(key), "output_path": str(store.image_path(key).relative_to(store.root))}
        batch_id = row.get("batch_id")
        if isinstance(batch_id, str) and (cache_store.root / "batches" / f"{batch_id}.json").is_file():
            batch = cache_store.read_batch(batch_id)
            store.write_batch(batch_id, batch["keys"], max_batch_size=batch["max_batch_size"])
        store.save_cell(key, image, row)
        counts["from_cache"] = counts.get("from_cache", 0) + 1
        bar.update(1)
    if from_cache:
        store.flush()
    # Pass 2: generate. The batched runner steps every chunk of cells that share scheduler, steps and image size
    # together; each finished chunk is saved before the next starts, so a crash loses at most one chunk.
    if batched:
        # Chunks are fixed by the plan (every non-duplicate cell, in plan order, per scheduler / steps / size),
        # not by what is left to do: a chunk that is missing any cell is recomputed whole, so every image comes
        # from the same batch composition whether the sweep ran in one go, resumed after a kill or was rerun.
        limit = max_batch_size or DEFAULT_MAX_BATCH.get(pipe.device.type, 16)
        todo = {key for _, key in pending}
        groups: dict[tuple, list[tuple[Cell, str]]] = {}
        for cell, key in planned:
            size = sources[cell.image_index].size
            groups.setdefault((cell.scheduler, cell.num_inference_steps, size), []).append((cell, key))
        chunk_cells = max(2 * limit, 32)
        for members in groups.values():
            for first in range(0, len(members), chunk_cells):
                chunk = members[first:first + chunk_cells]
                if not any(key in todo for _, key in chunk):
                    continue
                chunk_keys = [key for _, key in chunk]
                batch_id = hashlib.sha256(json.dumps([chunk_keys, limit]).encode()).hexdigest()[:16]
                store.write_batch(batch_id, chunk_keys, max_batch_size=limit)
                if cache_store is not None:
                    cache_store.write_batch(batch_id, chunk_keys, max_batch_size=limit)
                outputs = run_cells_batched(pipe, [cell for cell, _ in chunk], sources, max_batch_size=limit,
                                            on_step=on_step)
                for (cell, key), output in zip(chunk, outputs):
                    if key in todo:
                        save(cell, key, output.image, output.produced, output.seconds, output.nsfw_flagged,
                             batch_id)
                store.flush()
    else:
        last_flush = time.monotonic()
        for cell, key in pending:
            output = run_cell(pipe, cell, sources[cell.image_index], on_step=on_step)
            save(cell, key, output.image, output.produced, output.seconds, output.nsfw_flagged)
            if time.monotonic() - last_flush > 5:  # row files are durable; this only refreshes results.parquet
                store.flush()
                last_flush = time.monotonic()
    # Pass 3: strengths that run the same steps as a lower one reuse its image.
    for cell, key in duplicates:
        canonical = store.row(keys[(cell.group(), cell.duplicate_of)])
        if canonical is not None and store.has_cell(canonical["cell_key"]):
            from PIL import Image

            with Image.open(store.image_path(canonical["cell_key"])) as reused:
                image = reused.copy()
            save(cell, key, image, f"duplicate:{canonical['produced']}", 0.0, canonical["nsfw_flagged"])
        else:  # cannot happen for plans from SweepPlan.cells(); kept for hand-made cell lists
            output = run_cell(pipe, cell, sources[cell.image_index], on_step=on_step)
            save(cell, key, output.image, output.produced, output.seconds, output.nsfw_flagged)
    store.flush()
    bar.close()
    if metrics and (counts["already_done"] or from_cache):
        from img2img_lab.metrics import measure_run

        measure_run(out_dir, metrics, device=str(pipe.device), progress=False)  # rows from earlier runs
    manifest = {**store.read_manifest(), **{key: manifest[key] for key in manifest if key != "notes"}}
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["counts"] = {**counts, "cells": len(cells), "seconds": round(time.perf_counter() - started_clock, 3)}
    plan_keys = list(dict.fromkeys(keys[(cell.group(), cell.strength)] for cell in cells))
    manifest["completed"] = {"signature": signature, "keys": plan_keys} if signature else None
    store.write_manifest(manifest)
    return _in_plan_order(store.read_table(), plan_keys)
