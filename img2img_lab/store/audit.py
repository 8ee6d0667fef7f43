"""The checks of a run folder that need no model (what ``verify`` does first, and ``verify --repair`` repairs).

:func:`audit_run_folder` fills a :class:`VerifyReport`: the manifest and every row file are readable rows of their
cell; results.parquet and ``rows/`` agree; every planned cell has a row and an image; every image decodes to the
pixel hash its row records; no image is an orphan; sources and duplicate strengths are intact.

>>> report = VerifyReport(); report.ok
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from img2img_lab.errors import StoreError
from img2img_lab.store.folder_rules import escaping_entries, is_cell_key, is_pixel_hash
from img2img_lab.images.hashes import file_pixel_hash
from img2img_lab.plan.schema import row_group
from img2img_lab.store.run_store import RunStore


@dataclass
class VerifyReport:
    """What :func:`verify_run` checked and what failed (each failure names the file or cell and why)."""

    files_checked: int = 0
    file_failures: list = field(default_factory=list)
    missing_cells: list = field(default_factory=list)
    damaged_cells: set = field(default_factory=set)  # keys whose image is missing, unreadable or changed
    cells_regenerated: int = 0
    within_tolerance: int = 0
    mismatches: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    repaired: list = field(default_factory=list)
    not_repaired: list = field(default_factory=list)
    #: Entries of a form the project never writes, or that lead outside the folder: reported, never touched.
    hostile_entries: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.file_failures or self.missing_cells or self.mismatches or self.not_repaired)

    def summary(self) -> str:
        lines = [f"files: {self.files_checked} checked, {len(self.file_failures)} failed",
                 f"planned cells missing: {len(self.missing_cells)}",
                 f"regenerated: {self.cells_regenerated} cells, {len(self.mismatches)} differ"
                 + (f" ({self.within_tolerance} compared within the batched engine's tolerance)"
                    if self.within_tolerance else "")]
        lines += [f"  REPAIRED {item}" for item in self.repaired[:20]]
        lines += [f"  CANNOT REPAIR {item}" for item in self.not_repaired]
        lines += [f"  FAIL {failure}" for failure in self.file_failures[:20]]
        lines += [f"  MISSING {cell}" for cell in self.missing_cells[:20]]
        lines += [f"  DIFF {mismatch}" for mismatch in self.mismatches[:20]]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append("verify: OK" if self.ok else "verify: FAILED")
        return "\n".join(lines)


def _image_problem(path: Path, recorded: str) -> str | None:
    if not path.is_file():
        return "missing"
    digest = file_pixel_hash(path)
    if digest is None:
        return "unreadable (truncated or not a PNG)"
    if digest != recorded:
        return f"pixel hash {digest[:12]} != recorded {recorded[:12]} (the file was changed)"
    return None


def audit_run_folder(store: RunStore, report: VerifyReport):
    """The file checks of the module doc (no model); returns the table of readable rows (``None`` if the manifest
    is unreadable)."""
    escaping = escaping_entries(store.root)
    if escaping:  # nothing below is read: a symlinked folder or file would be followed
        report.file_failures += [f"{entry} (never read, written or deleted)" for entry in escaping]
        report.hostile_entries += escaping
        return None
    try:
        manifest = store.read_manifest()
        table = store.read_table(allow_damaged=True, allow_hostile=True)
    except StoreError as error:
        report.file_failures.append(str(error))
        return None
    hostile = [f"{entry}: {reason.split('. Fix:')[0].split(': ', 1)[-1]} (never used)"
               for entry, reason in sorted(store.hostile_rows.items())]
    report.file_failures += hostile
    report.hostile_entries += hostile
    keys = set(table["cell_key"]) if len(table) else set()
    for key in sorted(store.row_file_keys() | keys):
        report.files_checked += 1
        if store.read_row_file(key) is None and key in keys:
            report.file_failures.append(f"rows/{key}.json: missing or damaged (results.parquet still holds the row)")
    report.file_failures += [f"{Path(path).relative_to(store.root)}: unreadable row file ({reason})"
                             for path, reason in sorted(store.damaged_rows.items())]
    for row in table.to_dict("records"):
        report.files_checked += 1
        problem = _image_problem(store.image_path(row["cell_key"]), row["output_hash"])
        if problem:
            report.file_failures.append(f"images/{row['cell_key']}.png: {problem}")
            report.damaged_cells.add(row["cell_key"])
    for key in sorted(store.image_keys() - keys):
        report.files_checked += 1
        report.file_failures.append(f"images/{key}.png: no row records it (an orphan image)")
    planned = manifest.get("planned") if isinstance(manifest.get("planned"), dict) else {}
    for key, label in sorted(planned.items()):
        if not is_cell_key(key):
            report.file_failures.append(f"manifest.json: planned cell {key[:80]!r} is not a key img2img-lab writes "
                                        f"(never used)")
            report.hostile_entries.append(f"manifest.json planned {key[:80]!r}")
        elif key not in keys:
            there = " (its image is there, its row is gone)" if store.image_path(key).is_file() else ""
            report.missing_cells.append(f"{key}: {label}{there}")
    if len(table):
        _check_sources(store, table, report)
        _check_duplicates(table, report)
    return table


def _check_sources(store: RunStore, table, report: VerifyReport) -> None:
    for source_hash in sorted(set(table["source_hash"])):
        report.files_checked += 1
        if not is_pixel_hash(source_hash):
            report.file_failures.append(f"results.parquet: source_hash {str(source_hash)[:80]!r} is not a pixel hash "
                                        f"img2img-lab writes (never used)")
            report.hostile_entries.append(f"source_hash {str(source_hash)[:80]!r}")
            continue
        problem = _image_problem(store.source_path(source_hash), source_hash)
        if problem:
            report.file_failures.append(f"sources/{source_hash}.png: {problem}")


def _check_duplicates(table, report: VerifyReport) -> None:
    if "duplicate_of" not in table.columns:
        return
    canonical = {}
    for row in table.to_dict("records"):
        if row["duplicate_of"] is None or row["duplicate_of"] != row["duplicate_of"]:
            canonical[(row_group(row), float(row["strength"]))] = row["output_hash"]
    for row in table.to_dict("records"):
        if row["duplicate_of"] is not None and row["duplicate_of"] == row["duplicate_of"]:
            expected = canonical.get((row_group(row), float(row["duplicate_of"])))
            if expected is not None and expected != row["output_hash"]:
                report.file_failures.append(f"{row['output_path']}: duplicate of strength "
                                            f"{row['duplicate_of']:g} but holds different pixels")
