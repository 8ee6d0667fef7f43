"""Repair a run folder: regenerate or re-adopt what can be, and say what cannot.

:func:`repair_run_folder` (what ``img2img-lab verify RUN_DIR --repair`` runs) works from the folder's own records:

1. row files missing or damaged while results.parquet still holds the row are rewritten from it;
2. orphan images (no row) that no recorded plan names are removed (they cannot be told apart from debris);
3. every plan the manifest records (``manifest["plans"]``: the sweeps, extensions and calibration rounds) is swept
   again into the folder with its engine, batch cap and metrics. The sweep keeps every intact cell and regenerates
   the rest: missing cells, damaged or replaced images, unreadable rows, deleted sources. A damaged cell's recorded
   batch runs again whole, so a regenerated cell comes from the same batch composition as before.

What it cannot repair it reports: an unreadable manifest (rerun the sweep with its config), or a plan whose source
files are gone (restore them, then repair again).

>>> from img2img_lab.verify import verify_run
>>> from pathlib import Path
>>> next(Path("runs/demo/images").glob("*.png")).write_bytes(b"truncated")  # damage one image
9
>>> report = verify_run("runs/demo", sample=0, repair=True)
>>> report.ok
True
"""

from __future__ import annotations

from pathlib import Path

from img2img_lab.store import RunStore


def _recorded_plans(manifest: dict) -> list[dict]:
    """The folder's plan records (older folders recorded only their last plan)."""
    if manifest.get("plans"):
        return list(manifest["plans"])
    if manifest.get("plan"):
        engine = manifest.get("engine") or {}
        return [{"plan": manifest["plan"], "engine": engine.get("name", "batched"),
                 "max_batch_size": engine.get("max_batch_size"), "metrics": [],
                 "model_fingerprint": (manifest.get("model_fingerprint") or {}).get("fingerprint")}]
    return []


def repair_run_folder(store: RunStore, report, *, pipe=None, device: str | None = None) -> None:
    """Repair ``store`` (see the module doc), adding what was done to ``report.repaired`` and what could not be
    done to ``report.not_repaired`` (a :class:`img2img_lab.audit.VerifyReport`)."""
    from img2img_lab.audit import VerifyReport, audit_run_folder

    before = VerifyReport()
    table = audit_run_folder(store, before)
    if before.ok:
        report.notes.append("repair: nothing to repair")
        return
    manifest = store.read_manifest_or_none()
    if manifest is None or table is None:
        report.not_repaired.append(f"{store.manifest_path} is unreadable: rerun the sweep with its config "
                                   f"into this folder (intact cells are kept, a new manifest is written)")
        return
    for key in (table["cell_key"] if len(table) else []):
        if store.restore_row_file(key):
            report.repaired.append(f"rows/{key}.json rewritten from results.parquet")
    planned = set(manifest.get("planned") or {})
    known = set(table["cell_key"]) if len(table) else set()
    for key in sorted(store.image_keys() - known - planned):
        store.image_path(key).unlink(missing_ok=True)
        report.repaired.append(f"images/{key}.png removed (an orphan: no row, in no recorded plan)")
    for record in _recorded_plans(manifest):
        _rerun(store, record, report, pipe=pipe, device=device)


def _rerun(store: RunStore, record: dict, report, *, pipe, device) -> None:
    """Sweep one recorded plan into the folder again (intact cells are kept, the rest regenerated)."""
    from img2img_lab.pipelines import model_fingerprint
    from img2img_lab.plan import SweepPlan
    from img2img_lab.sweep import run_sweep

    plan = SweepPlan.from_dict(record["plan"])
    missing = [image for image in plan.images if not Path(image).is_file()]
    if missing:
        report.not_repaired.append(f"plan '{plan.name}': its source {missing[0]} is gone"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                   + ": restore it, then run verify --repair again")
        return
    fingerprint = record.get("model_fingerprint")
    use = pipe if pipe is not None and (fingerprint is None or model_fingerprint(pipe)["fingerprint"] == fingerprint) \
        else None
    run_sweep(plan, store.root, pipe=use, device=device, progress=False, metrics=record.get("metrics") or (),
              engine=record.get("engine") or "batched", max_batch_size=record.get("max_batch_size"), model_axis=True)
    counts = RunStore.open(store.root).read_manifest().get("counts", {})
    report.repaired.append(f"plan '{plan.name}' swept again: {counts.get('generated', 0)} cells regenerated, "
                           f"{counts.get('reused', 0)} duplicates reused, {counts.get('already_done', 0)} intact")
