"""What :meth:`img2img_lab.sweep.session.SweepSession.open` does before and as it creates the run folder: the sweep's
manifest, runner and conditions, every one checked before the folder is touched (:func:`plan_manifest`); the folder
created or its manifest merged under its lock (:func:`create_folder`); and the sources, their conditions and VAE floor
stored (:func:`store_sources`).

>>> now()[:2]
'20'
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from img2img_lab.engine.runners import choose_runner
from img2img_lab.models.handle import ModelHandle
from img2img_lab.plan.memory_settings import MemoryControls
from img2img_lab.plan.schema import COLUMNS
from img2img_lab.store.manifest import check_one_model, files_digest, merge_manifest, plan_config, plan_record
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.adapter_files import used_adapters
from img2img_lab.sweep.advisories import advise, floor_advisories, sweep_advisories
from img2img_lab.sweep.chunk_streams import chunk_streams
from img2img_lab.sweep.distributed import Context, ShardedRunner
from img2img_lab.sweep.options import SweepOptions
from img2img_lab.sweep.source_conditions import conditions_for_sweep, record_conditions, with_controls
from img2img_lab.sweep.sources import build_manifest, source_steps, write_floor


def now() -> str:
    """The time now, UTC, to the second (what a manifest records)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plan_manifest(plan, model: ModelHandle, options: SweepOptions, sources, recorded, context: Context, existing):
    """This sweep's manifest, runner and conditions, everything checked before the folder is touched."""
    from img2img_lab.metrics.availability import metric_weights, prepare_metric

    manifest = build_manifest(plan, model, sources, started=now(), recorded_sources=recorded)
    conditions = conditions_for_sweep(plan, model, sources, manifest["sources"], existing)
    manifest["sources"] = with_controls(manifest["sources"], conditions)
    manifest["notes"] += model.check_plan(plan)
    plan.cells(steps=source_steps(model, sources))  # a strength the model cannot run: refused before writing
    metrics = list(options.metrics)
    manifest["notes"] += [f"{why} (recorded as NaN)" for ok, why in map(prepare_metric, metrics) if not ok]
    manifest["metric_weights"] = metric_weights(metrics)
    runner, reason = choose_runner(model, sources, engine=options.engine, max_batch_size=options.max_batch_size,
                                   on_step=options.on_step, conditions=conditions,
                                   memory_budget=options.memory.memory_budget)
    streams, side_by_side = chunk_streams(model, runner, on_step=options.on_step, lora=bool(used_adapters(plan)),
                                          distributed=context.distributed)
    runner = replace(runner, streams=streams) if streams > 1 else runner
    if context.distributed:
        runner = ShardedRunner(runner, context)
    manifest["engine"] = {"name": runner.name, "reason": reason,
                          "max_batch_size": options.max_batch_size if runner.batch_limit else None,
                          "streams": streams, "streams_reason": side_by_side}
    fitted = getattr(getattr(runner, "runner", runner), "fitted", None)
    manifest["memory"] = {**options.memory.record(), **({"fitted": fitted} if fitted else {}),
                          "batch_limit": runner.batch_limit}
    fingerprint = manifest["model_fingerprint"]["fingerprint"]
    manifest["models"] = [{"spec": plan.model, "model": model.label, "fingerprint": fingerprint,
                           "family": model.family.name}]
    if options.memory.record() != MemoryControls().record():  # what rerunning the plan needs, in its record
        plan = replace(plan, memory=options.memory.record())
    manifest["plans"] = [plan_record(plan, engine=options.engine, max_batch_size=options.max_batch_size,
                                     metrics=metrics, fingerprint=fingerprint)]
    manifest["history"] = [{"started": manifest["created"], "command": sys.argv, "run": uuid.uuid4().hex[:12]}]
    if context.is_main:  # the model is the wrong tool: said once, in one line (advisories.py)
        manifest["notes"] += advise(sweep_advisories(plan, model.pipe, manifest["sources"], sources))
    return manifest, runner, conditions


def create_folder(out_dir, manifest: dict, model: ModelHandle, *, allow_other_models: bool) -> RunStore:
    """Create the run folder, or merge this sweep's manifest into the one it holds (under its lock)."""
    existed = RunStore.is_run_folder(out_dir)
    fingerprint = manifest["model_fingerprint"]["fingerprint"]

    def merge(previous: dict | None, new: dict) -> dict:
        if not allow_other_models:
            check_one_model(previous, fingerprint, model.label, out_dir)
        if previous is None and existed:
            new = {**new, "notes": new["notes"] + ["manifest.json was unreadable; this sweep wrote a new one "
                                                   "(the plans and history before it are lost)"]}
        return merge_manifest(previous, new)

    return RunStore.create(out_dir, manifest, merge=merge)


def store_sources(store: RunStore, plan, model: ModelHandle, options: SweepOptions, sources, manifest: dict,
                   conditions):
    """Store the config, the sources, their masks / control images and each source's VAE floor; returns the
    metrics' reference cache (``None`` without metrics)."""
    from img2img_lab.metrics.fidelity import ReferenceCache

    record = manifest["plans"][0]
    store.write_config(Path(record["config"]).stem, plan_config(record["plan"]))
    hashes = [entry["hash"] for entry in manifest["sources"]]
    for source_hash, source in zip(hashes, sources):
        store.write_source(source_hash, source)
    references = ReferenceCache(device=str(model.device)) if options.metrics else None
    if conditions is not None:
        record_conditions(store, conditions, hashes)
    write_floor(store, model, sources, hashes, plan.seeds[0], list(options.metrics), references=references)
    notes = advise(floor_advisories(store, manifest["sources"], manifest["model"]))
    if notes:
        store.update_manifest(lambda folder: {**folder, "notes": list(dict.fromkeys([*folder["notes"], *notes]))})
    return references


def completed_record(store: RunStore, signature: str | None, keys: list[str], source_hashes) -> dict | None:
    """The manifest's ``completed`` entry of a finished sweep (``None`` without a signature)."""
    if signature is None:
        return None
    sources = sorted(set(source_hashes))
    return {"signature": signature, "keys": keys, "sources": sources, "files": files_digest(store, keys, sources)}


def in_plan_order(table, keys: list[str]):
    """The rows of ``keys`` in that order, columns in :data:`COLUMNS` order (metrics after)."""
    order = {key: index for index, key in enumerate(keys)}
    table = table[table["cell_key"].isin(order)]
    table = table.iloc[table["cell_key"].map(order).argsort()].reset_index(drop=True)
    return table[[column for column in COLUMNS if column in table.columns]
                 + [column for column in table.columns if column not in COLUMNS]]


def copy_batch_record(origin: RunStore, target: RunStore, batch_id) -> None:
    """Copy the record of the batch that made a cell (verify regenerates a batched cell with its batch).

    >>> batch_id, cache = store.batch_ids()[0], RunStore("runs/cache")
    >>> copy_batch_record(store, cache, batch_id)
    >>> cache.read_batch(batch_id) == store.read_batch(batch_id)
    True
    """
    if isinstance(batch_id, str):
        batch = origin.read_batch(batch_id)
        if batch is not None:
            target.write_batch(batch_id, batch["keys"], max_batch_size=batch["max_batch_size"])
