"""Repair a run folder: regenerate or re-adopt what can be, and say what cannot.

:func:`repair_run_folder` (what ``img2img-lab verify RUN_DIR --repair`` runs) works from the folder's own records:

1. row files missing or damaged while results.parquet still holds the row are rewritten from it;
2. orphan images (no row) that no recorded plan names are removed (they cannot be told apart from debris);
3. every plan the manifest records (``manifest["plans"]``: the sweeps, extensions and calibration rounds) is swept
   again into the folder with its engine, batch cap and metrics. The sweep keeps every intact cell and regenerates
   the rest: missing cells, damaged or replaced images, unreadable rows, deleted sources. A damaged cell's recorded
   batch runs again whole, so a regenerated cell comes from the same batch composition as before.

A repair uses only what the folder holds (a folder may come from someone else): each plan's sources are the copies in
``sources/`` (found by their recorded hash; the plan's paths are history, never opened), and its model must have the
fingerprint the folder recorded. Its work is bounded: identical plan records are swept once, and more than
:data:`MAX_REPAIR_PLANS` plans or :data:`MAX_REPAIR_CELLS` cells to regenerate need ``yes=True`` (``--yes``).

What it cannot repair it reports: an unreadable manifest (rerun the sweep with its config), a plan whose sources the
folder no longer holds, a model that is not the one recorded, and any entry that is not of a form the project writes
or leads outside the folder (:mod:`img2img_lab.store.folder_rules`): then nothing is repaired.

>>> from img2img_lab.sweep.verify import verify_run
>>> from pathlib import Path
>>> next(Path("runs/demo/images").glob("*.png")).write_bytes(b"truncated")  # damage one image
9
>>> report = verify_run("runs/demo", sample=0, repair=True)
>>> report.ok
True
"""

from __future__ import annotations

import json

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.store.run_store import RunStore

#: Cells a repair regenerates without ``yes`` (a tampered manifest must not start hours of generation).
MAX_REPAIR_CELLS = 500
#: Distinct plans a repair sweeps again without ``yes``.
MAX_REPAIR_PLANS = 50


def _recorded_plans(manifest: dict) -> list[dict]:
    """The folder's plan records, identical ones once (older folders recorded only their last plan).

    >>> record = {"plan": {"name": "a"}, "engine": "batched", "max_batch_size": None, "metrics": []}
    >>> len(_recorded_plans({"plans": [record] * 20000}))
    1
    """
    if isinstance(manifest.get("plans"), list) and manifest["plans"]:
        records = [record for record in manifest["plans"] if isinstance(record, dict)]
    elif manifest.get("plan"):
        engine = manifest.get("engine") or {}
        records = [{"plan": manifest["plan"], "engine": engine.get("name", "batched"),
                    "max_batch_size": engine.get("max_batch_size"), "metrics": [],
                    "model_fingerprint": (manifest.get("model_fingerprint") or {}).get("fingerprint")}]
    else:
        return []
    distinct = {}
    for record in records:
        what = {name: record.get(name) for name in ("plan", "engine", "max_batch_size", "metrics",
                                                     "model_fingerprint")}
        distinct.setdefault(json.dumps(what, sort_keys=True, default=str), record)
    return list(distinct.values())


def repair_run_folder(store: RunStore, report, *, model=None, device: str | None = None, yes: bool = False) -> None:
    """Repair ``store`` (see the module doc), adding what was done to ``report.repaired`` and what could not be
    done to ``report.not_repaired`` (a :class:`img2img_lab.store.audit.VerifyReport`); ``model`` (a model handle)
    regenerates the cells it made, the folder's registered models the others."""
    from img2img_lab.store.audit import VerifyReport, audit_run_folder

    before = VerifyReport()
    table = audit_run_folder(store, before)
    if before.ok:
        report.notes.append("repair: nothing to repair")
        return
    if before.hostile_entries:
        count = len(before.hostile_entries)
        report.not_repaired.append(f"the folder holds {count} entr{'y' if count == 1 else 'ies'} img2img-lab never "
                                   f"writes or that lead outside it (the FAIL lines): nothing was repaired; remove "
                                   f"them (or ask whoever prepared the folder), then repair again")
        return
    manifest = store.read_manifest_or_none()
    if manifest is None or table is None:
        report.not_repaired.append(f"{store.manifest_path} is unreadable: rerun the sweep with its config "
                                   f"into this folder (intact cells are kept, a new manifest is written)")
        return
    for key in (table["cell_key"] if len(table) else []):
        if store.restore_row_file(key):
            report.repaired.append(f"rows/{key}.json rewritten from results.parquet")
    planned = set(manifest.get("planned") or {}) if isinstance(manifest.get("planned"), (dict, list)) else set()
    known = set(table["cell_key"]) if len(table) else set()
    for key in sorted(store.image_keys() - known - planned):
        store.image_path(key).unlink(missing_ok=True)
        report.repaired.append(f"images/{key}.png removed (an orphan: no row, in no recorded plan)")
    records = _recorded_plans(manifest)
    cells = len(before.missing_cells) + len(before.damaged_cells)
    if not yes and (len(records) > MAX_REPAIR_PLANS or cells > MAX_REPAIR_CELLS):
        report.not_repaired.append(
            f"repair would sweep {len(records)} plans again to regenerate {cells} cells (more than {MAX_REPAIR_PLANS} "
            f"plans or {MAX_REPAIR_CELLS} cells needs consent): `img2img-lab verify {store.root} --repair --yes`")
        return
    models: dict = {}
    for record in records:
        _rerun(store, record, report, manifest=manifest, model=model, device=device, models=models)


def _model_of(record: dict, manifest: dict, *, model, device, models: dict):
    """The model handle with the fingerprint the plan record names (``model``, or the folder's registered model
    loaded once), or ``None`` when no such model is at hand."""
    fingerprint = record.get("model_fingerprint") or (manifest.get("model_fingerprint") or {}).get("fingerprint")
    if not isinstance(fingerprint, str):
        return None
    if model is not None and model.fingerprint()["fingerprint"] == fingerprint:
        return model
    if fingerprint not in models:
        models[fingerprint] = model_for(fingerprint, None, manifest, device=device)
    return models[fingerprint]


def model_for(fingerprint: str, model, manifest: dict, *, device: str | None):
    """The model handle that made the cells of ``fingerprint``: ``model`` if it is that model, else the model the run
    folder registered under it, loaded (``None`` when neither is that model any more)."""
    from img2img_lab.models.loading import load_model
    from img2img_lab.store.manifest import registered_models

    if model is not None:
        return model if model.fingerprint()["fingerprint"] == fingerprint else None
    entries = [entry for entry in registered_models(manifest) if entry["fingerprint"] == fingerprint]
    spec = entries[0]["spec"] if entries else manifest.get("plan", {}).get("model")
    loaded = load_model(spec, device=device or str(manifest.get("device", "cpu")).split(":")[0],
                        dtype=manifest.get("dtype"))
    return loaded if loaded.fingerprint()["fingerprint"] == fingerprint else None


def _rerun(store: RunStore, record: dict, report, *, manifest: dict, model, device, models: dict) -> None:
    """Sweep one recorded plan into the folder again from the folder's own sources (intact cells are kept, the rest
    regenerated); what stands in the way is reported, not followed."""
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.sweep.run import run_sweep

    name = (record.get("plan") or {}).get("name") if isinstance(record.get("plan"), dict) else None
    try:
        plan = SweepPlan.from_dict(record["plan"])
        maker = _model_of(record, manifest, model=model, device=device, models=models)
        if maker is None:
            report.not_repaired.append(f"plan '{plan.name}': the model that made it (fingerprint "
                                       f"{str(record.get('model_fingerprint'))[:12]}) is not at hand: pass it "
                                       f"(verify_run(..., pipe=...)) or restore it, then repair again")
            return
        run_sweep(plan, store.root, pipe=maker, device=device, progress=False, metrics=record.get("metrics") or (),
                  engine=record.get("engine") or "batched", max_batch_size=record.get("max_batch_size"),
                  model_axis=True, sources_from_folder=True)
    except Img2ImgLabError as error:
        report.not_repaired.append(f"plan '{name}': {str(error).split(' Fix:')[0]}: restore what it names, then run "
                                   f"verify --repair again")
        return
    counts = RunStore.open(store.root).read_manifest().get("counts", {})
    report.repaired.append(f"plan '{plan.name}' swept again: {counts.get('generated', 0)} cells regenerated, "
                           f"{counts.get('reused', 0)} duplicates reused, {counts.get('already_done', 0)} intact")
