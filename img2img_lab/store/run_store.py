"""The run folder: the contract between generation and analysis.

::

    RUN_DIR/
      manifest.json      plan, model fingerprint, package versions, device, dtype, engine, source hashes
      rows/<key>.json    one row per finished cell, written right after its image (the durable log)
      measurements/      what `measure` added after the sweep, one file per run (the durable log's measured values)
      results.parquet    the consolidated tidy table (every parameter + derived columns + metrics): a cache of the log
      results.parts/     during a sweep: the rows of each checkpoint since (img2img_lab.store.table_log), merged in tiers
      images/<key>.png   one PNG per cell, named by the cell's content key
      batches/<id>.json  which cells the batched engine generated together
      configs/*.yaml     every plan swept into the folder (and a calibration's config): what the rerun commands take
      sources/<hash>.png the prepared sources (as the model saw them), named by their pixel hash
      masks/<hash>.png   each source's subject mask (region metrics), its origin in the manifest
      floor/<hash>-<seed>.png, floor.parquet
                         each source's VAE round trip per seed: what strength 0 stores (the fidelity floor)
      .lock, .tmp/       the writers' lock file and temporary files

Every file is written atomically: to a hidden temporary file (in ``.tmp/`` for the store's own files),
flushed and fsynced (a cell's image and row file are not: every read checks them against each other, and the
checkpoints' part files hold the rows again), then ``os.replace``-d over the final name. A reader (or a killed run)
therefore sees either the old complete file or the new complete file, never a partial one; stale temporary files
left by a killed process are removed when the folder is next opened. Writers in several processes take an exclusive
``fcntl.flock`` on ``.lock`` to store a cell (the first writer wins), to append a checkpoint's part file and to
consolidate ``results.parquet`` from the row files (:meth:`RunStore.flush`), so concurrent sweeps into one folder
cannot lose or mix rows. A checkpoint costs the same at the 100,000th cell as at the first (:meth:`RunStore.checkpoint`).
The image files and configs are :class:`img2img_lab.store.files.RunFolderFiles`' part of the store.

A run folder may come from someone else: every key and path is checked to have the project's form and to stay
inside the folder before it is read, written or deleted (:mod:`img2img_lab.store.folder_rules`).

>>> store = RunStore.create("runs/new", manifest={"plan": {}})
>>> len(store.read_table())
0
>>> RunStore.open("runs/demo").read_table().columns[:3].tolist()
['cell_key', 'source', 'source_name']
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from img2img_lab.store import table_log as table_log
from img2img_lab._utils.atomic import atomic_write, atomic_write_json
from img2img_lab.errors import StoreError
from img2img_lab.store.folder_rules import (UnsafeEntryError, check_cell_key, escaping_entries, expected_output_path,
                                      is_cell_key)
from img2img_lab.images.hashes import file_pixel_hash
from img2img_lab.plan.schema import LEGACY_COLUMNS, with_baseline_columns
from img2img_lab.store.files import FLOOR, IMAGES, SOURCES, RunFolderFiles, repair_hint

__all__ = ["RunStore", "atomic_write", "atomic_write_json", "repair_hint"]

MANIFEST = "manifest.json"
#: Sources a user uploaded (the explorer) live here, and may precede the manifest.
UPLOADS = "uploads"
RESULTS = "results.parquet"
#: One JSON file per finished cell (the durable log; results.parquet consolidates them).
ROWS = "rows"
#: The batched runner's batches: which cells were generated together (verify re-runs a whole batch).
BATCHES = "batches"
#: A calibration's files (``calibrate``), one subfolder per model of a comparison.
CALIBRATION = "calibration"
#: Lock file: writers hold an exclusive flock on it while they add a cell or rewrite results.parquet.
LOCK = ".lock"
#: Temporary files of the run folder's atomic writes (never inside images/, rows/ or sources/).
TEMP = ".tmp"
#: A batch's id (:func:`img2img_lab.engine.runners._batch_id`): 16 hex digits of a SHA-256.
BATCH_ID = re.compile(r"[0-9a-f]{16}")


class RunStore(RunFolderFiles):
    """A run folder on disk. Create with :meth:`create`, reopen with :meth:`open`.

    >>> store = RunStore.open("runs/demo")
    >>> table = store.read_table()
    >>> len(table), store.has_cell(table.cell_key[0])
    (6, True)
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.images_dir = self.root / IMAGES
        self._rows: dict[str, dict] | None = None
        #: Row files that could not be read (path -> why); a reader refuses them, the sweep regenerates them.
        self.damaged_rows: dict[str, str] = {}
        #: Rows and row files of a form the project never writes (a key that is no key, an image path that is not
        #: the row's own, a file that leads outside the folder): never used; a reader refuses them, verify reports them.
        self.hostile_rows: dict[str, str] = {}
        self._intact: set[tuple[str, str]] = set()  # (key, output_hash) pairs whose image file was checked
        self._unflushed: dict[str, dict] = {}  # rows this store saved since its last flush

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, root: str | os.PathLike, manifest: dict,
               merge: Callable[[dict | None, dict], dict] | None = None) -> "RunStore":
        """Create (or reopen for extension) a run folder and write its manifest, all under the folder's lock.

        ``merge(previous, manifest)`` combines the manifest already there (``None`` if there is none or it is
        unreadable) with the new one (default :func:`img2img_lab.store.manifest.merge_manifest`), so concurrent writers
        append to the plans and history instead of overwriting them.

        >>> store = RunStore.create("/tmp/img2img-lab-doc-run", {"plan": {}})
        >>> store.read_manifest()["plan"]
        {}
        """
        store = cls(root)
        if store.root.exists() and not store.root.is_dir():
            raise StoreError(f"run folder '{root}' is a file. Fix: choose another --out path.")
        store.root.mkdir(parents=True, exist_ok=True)
        store.refuse_escaping_entries()
        if (store.root / MANIFEST).is_file():
            store.refuse_hostile_rows()
        with store.locked():
            foreign = [entry for entry in store.root.iterdir() if entry.name not in (UPLOADS, LOCK, TEMP)]
            if foreign and not (store.root / MANIFEST).exists():
                raise StoreError(
                    f"'{root}' exists, is not empty and is not an img2img-lab run folder (no {MANIFEST}). "
                    f"Fix: choose a new --out folder."
                )
            if merge is None:
                from img2img_lab.store.manifest import merge_manifest as merge
            manifest = merge(store.read_manifest_or_none(), manifest)
            store.images_dir.mkdir(parents=True, exist_ok=True)
            store.remove_stale_temp_files()
            store.write_manifest(manifest)
        return store

    def refuse_escaping_entries(self) -> None:
        """An :class:`~img2img_lab.store.folder_rules.UnsafeEntryError` naming the first entry that leads outside the folder
        (a writer checks before it writes anything)."""
        escaping = escaping_entries(self.root)
        if escaping:
            more = f" (and {len(escaping) - 1} more)" if len(escaping) > 1 else ""
            raise UnsafeEntryError(f"{escaping[0]}{more}: nothing is written into this folder. Fix: remove that "
                                   f"entry, or sweep into a new --out folder.")

    def refuse_hostile_rows(self) -> None:
        """An :class:`~img2img_lab.store.folder_rules.UnsafeEntryError` naming the first row of a form the project never
        writes (readers and writers refuse the folder; ``verify`` lists them all)."""
        self._load_rows()
        if self.hostile_rows:
            entry, reason = next(iter(self.hostile_rows.items()))
            more = f" (and {len(self.hostile_rows) - 1} more)" if len(self.hostile_rows) > 1 else ""
            raise UnsafeEntryError(f"{self.root}: {reason.split('. Fix:')[0]}{more}. Fix: remove that entry (or ask "
                                   f"whoever prepared the folder); `img2img-lab verify {self.root}` lists them all.")

    @staticmethod
    def is_run_folder(root) -> bool:
        """Whether ``root`` is a run folder (it has a manifest file, readable or not).

        >>> RunStore.is_run_folder("/nonexistent")
        False
        """
        return root is not None and (Path(root) / MANIFEST).is_file()

    def calibration_dir(self, subfolder: str | None = None) -> Path:
        """Where a calibration's files go (``calibration/`` or ``calibration/<subfolder>/``, one per model)."""
        return self.entry(Path(CALIBRATION) / (subfolder or ""))

    @property
    def manifest_path(self) -> Path:
        return self.entry(MANIFEST)

    @classmethod
    def open(cls, root: str | os.PathLike) -> "RunStore":
        """Open an existing run folder (for analysis; needs no model)."""
        store = cls(root)
        if not store.root.exists():
            raise StoreError(f"run folder '{root}' does not exist. Fix: check the path, or create it with "
                             f"`img2img-lab sweep CONFIG --out {root}` (or `img2img-lab demo --out {root}`).")
        if not (store.root / MANIFEST).is_file():
            raise StoreError(
                f"'{root}' is not an img2img-lab run folder (no {MANIFEST}). "
                f"Fix: pass the folder given to `img2img-lab sweep --out`."
            )
        return store

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files left by a killed writer; returns how many were removed.

        Only files older than a minute are touched, so a concurrent writer's live temp file survives.
        """
        removed = 0
        cutoff = time.time() - 60
        for folder in (self.root, self.images_dir, self.root / SOURCES, self.root / FLOOR, self.root / ROWS,
                       self.temp_dir):
            if not folder.is_dir() or not self._stays_inside(folder):
                continue
            for temp in folder.glob(".*.tmp"):
                try:
                    if temp.stat().st_mtime < cutoff:
                        temp.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def _stays_inside(self, path: Path) -> bool:
        try:
            self.entry(path.relative_to(self.root))
        except UnsafeEntryError:
            return False
        return True

    # ------------------------------------------------------------------ manifest
    def read_manifest(self) -> dict:
        """The manifest (a JSON object); a :class:`StoreError` naming the file and the fix if it is unreadable."""
        path = self.entry(MANIFEST)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            reason = " ".join(str(error).split())
        else:
            if isinstance(manifest, dict):
                return manifest
            reason = f"a JSON {type(manifest).__name__}, not an object"
        raise StoreError(f"{path}: unreadable ({reason}). Fix: rerun the sweep with its config into this folder "
                         f"(its intact cells are kept and a new manifest is written).")

    def read_manifest_or_none(self) -> dict | None:
        """The manifest, or ``None`` when there is none or it is unreadable (a writer then starts a new one)."""
        try:
            return self.read_manifest()
        except StoreError:
            return None

    def write_manifest(self, manifest: dict) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
        self._write(self.root / MANIFEST, lambda stream: stream.write(text), binary=False)

    def update_manifest(self, change: Callable[[dict], dict]) -> dict:
        """Read, change and rewrite the manifest under the lock (concurrent writers never lose each other's
        entries); returns the new manifest."""
        with self.locked():
            manifest = change(self.read_manifest_or_none() or {})
            self.write_manifest(manifest)
        return manifest

    def row_file_keys(self) -> set[str]:
        """The keys of every row file in ``rows/`` (readable or not)."""
        folder = self.entry(ROWS)
        return {path.stem for path in folder.glob("*.json") if is_cell_key(path.stem)} if folder.is_dir() else set()

    # ------------------------------------------------------------------ locking and batches
    @contextmanager
    def locked(self):
        """Hold the run folder's exclusive lock (``fcntl.flock`` on ``.lock``): writers in other processes wait.

        >>> with RunStore("/tmp/img2img-lab-doc-run").locked():
        ...     pass
        """
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.entry(LOCK), "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def write_batch(self, batch_id: str, keys: list[str], *, max_batch_size: int) -> Path:
        """Record which cells the batched runner generated together (``batches/<id>.json``), once."""
        path = self._batch_path(batch_id)
        if self.read_batch(batch_id) is None:
            record = json.dumps({"batch_id": batch_id, "keys": list(keys), "max_batch_size": int(max_batch_size)},
                                indent=2, sort_keys=True)
            self._write(path, lambda stream: stream.write(record), binary=False)
        return path

    def _batch_path(self, batch_id: str) -> Path:
        if not (isinstance(batch_id, str) and BATCH_ID.fullmatch(batch_id)):
            raise UnsafeEntryError(f"batch_id {batch_id!r} is not a batch id img2img-lab writes (16 lower-case hex "
                                   f"digits). Fix: remove the row that names it.")
        return self.entry(f"{BATCHES}/{batch_id}.json")

    def batch_ids(self) -> list[str]:
        """The ids of every recorded batch."""
        return sorted(path.stem for path in self.entry(BATCHES).glob("*.json") if BATCH_ID.fullmatch(path.stem))

    def read_batch(self, batch_id: str) -> dict | None:
        """A recorded batch (``{"keys", "max_batch_size"}``), or ``None`` if it is missing or unreadable."""
        try:
            batch = json.loads(self._batch_path(batch_id).read_text())
        except (OSError, ValueError):  # UnsafeEntryError is a ValueError: a hostile id is no batch
            return None
        valid = isinstance(batch, dict) and isinstance(batch.get("keys"), list) and isinstance(
            batch.get("max_batch_size"), int)
        return batch if valid else None

    @property
    def temp_dir(self) -> Path:
        return self.root / TEMP

    # ------------------------------------------------------------------ rows
    def row_path(self, key: str) -> Path:
        return self.entry(f"{ROWS}/{check_cell_key(key)}.json")

    def read_row_file(self, key: str) -> dict | None:
        """The row file of ``key`` if it exists and is a valid row (a JSON object naming this key and a pixel
        hash); else ``None`` (and a damaged file is noted in :attr:`damaged_rows`)."""
        try:
            path = self.row_path(key)
        except UnsafeEntryError as error:
            self.hostile_rows[f"{ROWS}/{key}.json"] = str(error)
            return None
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            self.damaged_rows[str(path)] = " ".join(str(error).split())
            return None
        if not isinstance(row, dict) or row.get("cell_key") != key or not isinstance(row.get("output_hash"), str):
            self.damaged_rows[str(path)] = "not a row of this cell (cell_key and output_hash missing or wrong)"
            return None
        return row

    def _read_disk_rows(self) -> dict[str, dict]:
        """Every row on disk (:func:`img2img_lab.store.table_log.read_rows`) of the form the project writes; others are
        noted in :attr:`hostile_rows` and left out."""
        for name in (RESULTS, ROWS, table_log.PARTS, table_log.MEASUREMENTS):
            self.entry(name)
        rows = table_log.read_rows(self.root / RESULTS, self.root / ROWS, self.read_row_file)
        for key, row in list(rows.items()):
            try:
                expected_output_path(row)
            except UnsafeEntryError as error:
                self.hostile_rows[f"{RESULTS} row {key!r}"[:120]] = str(error)
                del rows[key]
        return rows

    def _load_rows(self) -> dict[str, dict]:
        if self._rows is None:
            self._rows = self._read_disk_rows()
        return self._rows

    def image_matches(self, key: str, output_hash: str) -> bool:
        """Whether ``images/<key>.png`` decodes to the pixels ``output_hash`` records (checked once per store)."""
        if (key, output_hash) in self._intact:
            return True
        if file_pixel_hash(self.image_path(key)) != output_hash:
            return False
        self._intact.add((key, output_hash))
        return True

    def has_cell(self, key: str) -> bool:
        """A cell is done when its row is in the table and its image file holds the pixels the row records (a
        truncated or replaced image is not done: the sweep regenerates it)."""
        row = self._load_rows().get(key)
        return row is not None and self.image_matches(key, row["output_hash"])

    def reload(self) -> None:
        """Forget the rows read so far: the next read sees every row file on disk (other ranks' cells included)."""
        self._rows, self.damaged_rows, self.hostile_rows = None, {}, {}

    def row(self, key: str) -> dict | None:
        return self._load_rows().get(key)

    def stored_cell(self, key: str):
        """``(image, row)`` of an intact cell (the image's pixels are the ones its row records), else ``None``."""
        from img2img_lab.images.hashes import content_hash

        row = self.read_row_file(key) or self._load_rows().get(key)
        if row is None:
            return None
        try:
            image = self._load_image(self.image_path(key))
        except StoreError:
            return None
        if content_hash(image) != row["output_hash"]:
            return None
        self._intact.add((key, row["output_hash"]))
        return image, row

    def save_cell(self, key: str, image, row: dict) -> bool:
        """Store a finished cell: its image, then its row file, both atomically, under the folder's lock.

        The first writer wins: if another process stored this cell first (an intact image with the pixels of its
        readable row), nothing is overwritten and False is returned (its row is adopted, with its image); else the
        pair is written (a damaged earlier pair is replaced) and True is returned.

        >>> store.save_cell(key, output, row)  # this folder has the cell already: its pair is kept
        False
        """
        from img2img_lab.images.hashes import content_hash

        if row.get("cell_key") != key or row.get("output_hash") != content_hash(image):
            raise StoreError(f"save_cell {key}: the row must name this key and the image's pixel hash.")
        with self.locked():
            existing = self.read_row_file(key)
            if existing is not None and self.image_matches(key, existing["output_hash"]):
                self._load_rows()[key] = existing
                return False
            self.write_image(key, image)
            row_path = self.row_path(key)
            self._write(row_path, lambda stream: stream.write(json.dumps(row, default=_json_value)),
                        binary=False, durable=False)  # read only with its image's pixels checked against it
            self.damaged_rows.pop(str(row_path), None)
        self._intact.add((key, row["output_hash"]))
        self._load_rows()[key] = row
        self._unflushed[key] = row
        return True

    def restore_row_file(self, key: str) -> bool:
        """Rewrite a missing or damaged ``rows/<key>.json`` from results.parquet; True if it was rewritten."""
        row = self._load_rows().get(key)
        if row is None or self.read_row_file(key) is not None:
            return False
        with self.locked():
            self._write(self.row_path(key), lambda stream: stream.write(json.dumps(row, default=_json_value)),
                        binary=False)
        self.damaged_rows.pop(str(self.row_path(key)), None)
        return True

    def record_measurements(self, before, after) -> Path | None:
        """Log the values ``after`` adds to ``before`` (a table read from this store, then measured) in
        ``measurements/``, where every reader finds them again (:func:`img2img_lab.store.table_log.measured_changes`):
        losing results.parquet loses no measured value. Returns the log's path (``None``: nothing new)."""
        changes = table_log.measured_changes(before, after)
        if changes.empty:
            return None
        self.entry(table_log.MEASUREMENTS)
        self.entry(TEMP)
        with self.locked():
            return table_log.write_measurements(self.root, changes, temp_dir=self.temp_dir)

    def replace_table(self, table) -> None:
        """Replace every row with those of ``table`` (a DataFrame with a cell_key column) and consolidate."""
        self._rows = {row["cell_key"]: row for row in table.to_dict("records")}
        self.flush(merge=False)

    def checkpoint(self) -> None:
        """Make the rows this store saved since its last checkpoint part of the table at a cost that does not grow
        with the table: one small part file (row files are durable already; see :mod:`img2img_lab.store.table_log`)."""
        if not self._unflushed:
            return
        with self.locked():
            table_log.write_part(self.root, list(self._unflushed.values()), temp_dir=self.temp_dir)
            table_log.merge_tiers(self.root, temp_dir=self.temp_dir)
        self._unflushed = {}

    def flush(self, *, merge: bool = True) -> None:
        """Consolidate: rewrite results.parquet atomically under the lock: the rows on disk (parts and other writers' row files
        included, when ``merge``) updated with the rows in memory; the parts it took in are removed."""
        import pandas as pd

        with self.locked():
            parts = table_log.part_paths(self.root)
            rows = self._read_disk_rows() if merge else {}
            if not merge or self._rows is not None:  # else the rows in memory are those just read (once, not twice)
                rows.update(self._load_rows())
            table = pd.DataFrame(list(rows.values()))
            self._write(self.root / RESULTS, lambda stream: table.to_parquet(stream, index=False))
            table_log.remove_parts(parts)
            self._rows, self._unflushed = rows, {}

    def remove_empty_work_folders(self) -> None:
        """Remove ``results.parts/`` and ``.tmp/`` when empty (a finished folder keeps only its results); a writer
        that needs one later makes it again. A folder with anything in it stays.

        >>> store.remove_empty_work_folders(); (store.root / ".tmp").exists()
        False
        """
        for name in (table_log.PARTS, TEMP):
            try:
                (self.root / name).rmdir()
            except OSError:  # missing, not empty, or not a folder: left as it is
                pass

    def read_table(self, *, allow_damaged: bool = False, allow_hostile: bool = False):
        """The results table as a pandas DataFrame (empty if no cell has finished yet).

        A damaged row file raises a :class:`StoreError` naming it and the fix, unless ``allow_damaged`` (a
        sweep regenerates those cells; verify reports them). A row of a form the project never writes (see
        :mod:`img2img_lab.store.folder_rules`) raises an :class:`~img2img_lab.store.folder_rules.UnsafeEntryError` naming it,
        unless ``allow_hostile`` (verify, which reports it); such rows are never in the table.
        """
        import pandas as pd

        rows = self._load_rows()
        if not allow_hostile:
            self.refuse_hostile_rows()
        if self.damaged_rows and not allow_damaged:
            path, reason = next(iter(self.damaged_rows.items()))
            more = f" (and {len(self.damaged_rows) - 1} more)" if len(self.damaged_rows) > 1 else ""
            raise StoreError(f"{path}: unreadable row file ({reason}){more}. {repair_hint(self.root)}")
        table = pd.DataFrame(list(rows.values())).drop(columns=list(LEGACY_COLUMNS), errors="ignore")
        return with_baseline_columns(table)


def _json_value(value):
    """JSON for numpy scalars and other values a row may hold."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
