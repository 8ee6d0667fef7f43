"""Verify a run folder: every file is intact, and a sample of cells regenerates to the same pixels.

:func:`verify_run` checks, without a model, that every row's image exists, decodes and has the pixel hash its
row records, that every stored source has its hash, and that duplicate strengths hold their canonical image.
Then (unless ``sample=0``) it loads the model named in the manifest, regenerates a random sample of cells
exactly as the sweep did (per-cell cells alone; batched cells with their whole batch, as recorded in
``batches/``), and compares pixel hashes: on the same machine and package versions they are bit-identical.

>>> report = verify_run("runs/demo", sample=8)  # doctest: +SKIP
>>> report.ok, report.summary()  # doctest: +SKIP
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import img2img_lab  # noqa: F401  - torchvision shim first
from img2img_lab.plan import Cell
from img2img_lab.store import RunStore


@dataclass
class VerifyReport:
    """What :func:`verify_run` checked and what failed (each failure names the file or cell and why)."""

    files_checked: int = 0
    file_failures: list = field(default_factory=list)
    cells_regenerated: int = 0
    mismatches: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.file_failures and not self.mismatches

    def summary(self) -> str:
        lines = [f"files: {self.files_checked} checked, {len(self.file_failures)} failed",
                 f"regenerated: {self.cells_regenerated} cells, {len(self.mismatches)} differ"]
        lines += [f"  FAIL {failure}" for failure in self.file_failures[:20]]
        lines += [f"  DIFF {mismatch}" for mismatch in self.mismatches[:20]]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append("verify: OK" if self.ok else "verify: FAILED")
        return "\n".join(lines)


def _check_files(store: RunStore, table, report: VerifyReport) -> None:
    from PIL import Image

    from img2img_lab.images import content_hash

    for row in table.to_dict("records"):
        path = store.root / row["output_path"]
        report.files_checked += 1
        try:
            with Image.open(path) as image:
                digest = content_hash(image.convert("RGB"))
        except (OSError, ValueError) as error:
            report.file_failures.append(f"{row['output_path']}: unreadable ({error})")
            continue
        if digest != row["output_hash"]:
            report.file_failures.append(f"{row['output_path']}: pixel hash {digest[:12]} != recorded "
                                        f"{row['output_hash'][:12]} (the file was changed)")
    for source_hash in sorted(set(table["source_hash"])):
        report.files_checked += 1
        try:
            if content_hash(store.load_source(source_hash)) != source_hash:
                report.file_failures.append(f"sources/{source_hash}.png: pixels differ from its name")
        except Exception as error:  # noqa: BLE001 - any failure to read is a failure to verify
            report.file_failures.append(f"sources/{source_hash}.png: {error}")
    if "duplicate_of" in table.columns:
        canonical = {}
        for row in table.to_dict("records"):
            if row["duplicate_of"] is None or row["duplicate_of"] != row["duplicate_of"]:
                group = _group(row)
                canonical[(group, float(row["strength"]))] = row["output_hash"]
        for row in table.to_dict("records"):
            if row["duplicate_of"] is not None and row["duplicate_of"] == row["duplicate_of"]:
                expected = canonical.get((_group(row), float(row["duplicate_of"])))
                if expected is not None and expected != row["output_hash"]:
                    report.file_failures.append(f"{row['output_path']}: duplicate of strength "
                                                f"{row['duplicate_of']:g} but holds different pixels")


def _group(row: dict) -> tuple:
    return (row["source_hash"], row["prompt"], row["negative_prompt"], int(row["seed"]),
            float(row["guidance_scale"]), int(row["num_inference_steps"]), row["scheduler"])


def _cell(row: dict, image_index: int, steps_of) -> Cell:
    """The cell a row records; its steps come from the model (``steps_of``, see :func:`sweep.source_steps`)."""
    steps = steps_of(row["scheduler"], int(row["num_inference_steps"]), float(row["strength"]), image_index)
    return Cell(image=str(row["source"]), image_index=image_index, prompt=row["prompt"],
                negative_prompt=row["negative_prompt"], strength=float(row["strength"]), seed=int(row["seed"]),
                guidance_scale=float(row["guidance_scale"]), num_inference_steps=int(row["num_inference_steps"]),
                scheduler=row["scheduler"], init_steps=steps.executed_steps, t_start=steps.t_start,
                zero_step=steps.zero_step)


def verify_run(run_dir, *, sample: int = 8, seed: int = 0, pipe=None, device: str | None = None) -> VerifyReport:
    """Check a run folder's files and regenerate ``sample`` random cells (0 = files only); see the module doc.

    >>> verify_run("runs/demo", sample=0).ok  # doctest: +SKIP
    True
    """
    from img2img_lab.errors import StoreError

    store = RunStore.open(run_dir)
    table = store.read_table()
    report = VerifyReport()
    if table.empty:
        raise StoreError(f"{run_dir}: no finished cells to verify. Fix: run the sweep first.")
    _check_files(store, table, report)
    if sample <= 0:
        return report
    manifest = store.read_manifest()
    candidates = table[table["produced"].astype(str).str.startswith("duplicate:") == False]  # noqa: E712
    picked = random.Random(seed).sample(list(candidates["cell_key"]), min(sample, len(candidates)))
    rows = {row["cell_key"]: row for row in table.to_dict("records")}
    hashes = sorted(set(table["source_hash"]))
    sources = [store.load_source(source_hash) for source_hash in hashes]
    by_model: dict[str, list[str]] = {}
    for key in picked:  # a folder of a models: [A, B] comparison holds several models' cells
        by_model.setdefault(str(rows[key].get("model_fingerprint")), []).append(key)
    batches_done: set = set()
    for fingerprint, keys in by_model.items():
        model_pipe = _model_for(fingerprint, pipe, manifest, device=device)
        if model_pipe is None:
            report.mismatches += [f"{key}: the loaded model's fingerprint differs from the one that made it"
                                  for key in keys]
            continue
        _regenerate(store, model_pipe, keys, rows, sources, hashes, report, batches_done)
    report.notes.append(f"sampled {len(picked)} of {len(candidates)} generated cells (seed {seed}); "
                        f"{len(batches_done)} batches regenerated whole")
    return report


def _model_for(fingerprint: str, pipe, manifest: dict, *, device: str | None):
    """The pipeline that made the cells of ``fingerprint``: ``pipe`` if it is that model, else the model the run
    folder registered under it, loaded (``None`` when neither is that model any more)."""
    from img2img_lab.pipelines import load_pipeline, model_fingerprint
    from img2img_lab.sweep import registered_models

    if pipe is not None:
        return pipe if model_fingerprint(pipe)["fingerprint"] == fingerprint else None
    entries = [entry for entry in registered_models(manifest) if entry["fingerprint"] == fingerprint]
    spec = entries[0]["spec"] if entries else manifest.get("plan", {}).get("model")
    loaded = load_pipeline(spec, device=device or str(manifest.get("device", "cpu")).split(":")[0],
                           dtype=manifest.get("dtype"))
    return loaded if model_fingerprint(loaded)["fingerprint"] == fingerprint else None


def _regenerate(store: RunStore, pipe, keys, rows, sources, hashes, report: VerifyReport, batches_done: set) -> None:
    """Regenerate ``keys`` with ``pipe`` exactly as the sweep did (batched cells with their whole batch)."""
    from img2img_lab.batched import run_cells_batched
    from img2img_lab.engine import run_cell
    from img2img_lab.images import content_hash
    from img2img_lab.models import as_model
    from img2img_lab.sweep import source_steps

    steps_of = source_steps(as_model(pipe), sources)
    index_of = {source_hash: index for index, source_hash in enumerate(hashes)}

    def compare(row: dict, image) -> None:
        report.cells_regenerated += 1
        got = content_hash(image)
        if got != row["output_hash"]:
            report.mismatches.append(f"{row['cell_key']} (strength {row['strength']:g}, seed {row['seed']}): "
                                     f"regenerated {got[:12]} != stored {row['output_hash'][:12]}")

    for key in keys:
        row = rows[key]
        batch_id = row.get("batch_id")
        if row.get("engine") == "batched" and isinstance(batch_id, str):
            if batch_id in batches_done:
                continue
            if not (store.root / "batches" / f"{batch_id}.json").is_file():
                report.notes.append(f"{key}: its batch {batch_id} is not recorded here (copied from a cache); "
                                    f"not regenerated")
                continue
            batch = store.read_batch(batch_id)
            members = [rows[member] for member in batch["keys"] if member in rows]
            if len(members) != len(batch["keys"]):
                report.notes.append(f"batch {batch_id}: {len(batch['keys']) - len(members)} members missing")
                continue
            cells = [_cell(member, index_of[member["source_hash"]], steps_of) for member in members]
            for member, output in zip(members, run_cells_batched(pipe, cells, sources,
                                                                 max_batch_size=batch["max_batch_size"])):
                compare(member, output.image)
            batches_done.add(batch_id)
        else:
            index = index_of[row["source_hash"]]
            compare(row, run_cell(pipe, _cell(row, index, steps_of), sources[index]).image)


def main(run_dir: str | Path, *, sample: int, seed: int, device: str | None) -> int:
    report = verify_run(run_dir, sample=sample, seed=seed, device=device)
    print(report.summary())
    return 0 if report.ok else 1
