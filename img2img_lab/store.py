"""The run folder: the contract between generation and analysis.

::

    RUN_DIR/
      manifest.json      plan, model fingerprint, package versions, device, dtype, engine, source hashes
      rows/<key>.json    one row per finished cell, written right after its image (the durable log)
      results.parquet    the consolidated tidy table (every parameter + derived columns + metrics)
      images/<key>.png   one PNG per cell, named by the cell's content key
      batches/<id>.json  which cells the batched engine generated together
      sources/<hash>.png the prepared sources (as the model saw them), named by their pixel hash
      floor/<hash>-<seed>.png, floor.parquet
                         each source's VAE round trip per seed: the closest any output can get
      .lock, .tmp/       the writers' lock file and temporary files

Every file is written atomically: to a hidden temporary file (in ``.tmp/`` for the store's own files),
flushed and fsynced, then ``os.replace``-d over the final name. A reader (or a killed run) therefore sees
either the old complete file or the new complete file, never a partial one; stale temporary files left by a
killed process are removed when the folder is next opened. Writers in several processes take an exclusive
``fcntl.flock`` on ``.lock`` to store a cell (the first writer wins) and to consolidate ``results.parquet``
from the row files, so concurrent sweeps into one folder cannot lose or mix rows.

>>> store = RunStore.create("runs/demo", manifest={"plan": {}})  # doctest: +SKIP
>>> store.read_table().columns[:3].tolist()  # doctest: +SKIP
['cell_key', 'source', 'source_hash']
"""

from __future__ import annotations

import json
from contextlib import contextmanager
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from img2img_lab.errors import StoreError

MANIFEST = "manifest.json"
#: Sources a user uploaded (the explorer) live here, and may precede the manifest.
UPLOADS = "uploads"
RESULTS = "results.parquet"
IMAGES = "images"
SOURCES = "sources"
FLOOR = "floor"
FLOOR_TABLE = "floor.parquet"
#: One JSON file per finished cell (the durable log; results.parquet consolidates them).
ROWS = "rows"
#: The batched runner's batches: which cells were generated together (verify re-runs a whole batch).
BATCHES = "batches"
#: Lock file: writers hold an exclusive flock on it while they add a cell or rewrite results.parquet.
LOCK = ".lock"
#: Temporary files of the run folder's atomic writes (never inside images/, rows/ or sources/).
TEMP = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True,
                 temp_dir: str | os.PathLike | None = None) -> Path:
    """Write a file atomically: ``write(handle)`` fills a temp file that then replaces ``path``.

    The temp file lives in ``temp_dir`` (same file system; default: ``path``'s folder), so a folder of final
    files never shows a partial one, even right after a SIGKILL.

    >>> atomic_write("/tmp/hello.txt", lambda f: f.write("hi"), binary=False)
    PosixPath('/tmp/hello.txt')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(temp_dir) if temp_dir is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (sorted keys, indented, non-JSON values as strings)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda stream: stream.write(text), binary=False)


class RunStore:
    """A run folder on disk. Create with :meth:`create`, reopen with :meth:`open`.

    >>> store = RunStore.open("runs/demo")  # doctest: +SKIP
    >>> table = store.read_table()          # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.images_dir = self.root / IMAGES
        self._rows: dict[str, dict] | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, root: str | os.PathLike, manifest: dict) -> "RunStore":
        """Create (or reopen for extension) a run folder and write its manifest atomically."""
        store = cls(root)
        if store.root.exists() and not store.root.is_dir():
            raise StoreError(f"run folder '{root}' is a file. Fix: choose another --out path.")
        foreign = [entry for entry in store.root.iterdir() if entry.name != UPLOADS] if store.root.is_dir() else []
        if foreign and not (store.root / MANIFEST).exists():
            raise StoreError(
                f"'{root}' exists, is not empty and is not an img2img-lab run folder (no {MANIFEST}). "
                f"Fix: choose a new --out folder."
            )
        store.images_dir.mkdir(parents=True, exist_ok=True)
        store.remove_stale_temp_files()
        atomic_write_json(store.root / MANIFEST, manifest)
        return store

    @classmethod
    def open(cls, root: str | os.PathLike) -> "RunStore":
        """Open an existing run folder (for analysis; needs no model)."""
        store = cls(root)
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
            if not folder.is_dir():
                continue
            for temp in folder.glob(".*.tmp"):
                try:
                    if temp.stat().st_mtime < cutoff:
                        temp.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    # ------------------------------------------------------------------ manifest
    def read_manifest(self) -> dict:
        try:
            return json.loads((self.root / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise StoreError(f"{self.root / MANIFEST}: unreadable ({error}).") from None

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.root / MANIFEST, manifest)

    # ------------------------------------------------------------------ images
    def image_path(self, key: str) -> Path:
        return self.images_dir / f"{key}.png"

    def source_path(self, source_hash: str) -> Path:
        return self.root / SOURCES / f"{source_hash}.png"

    def write_source(self, source_hash: str, image) -> Path:
        """Keep the prepared source so analysis never needs the original file or the model."""
        path = self.source_path(source_hash)
        if not path.is_file():
            atomic_write(path, lambda stream: image.save(stream, format="PNG"), temp_dir=self.temp_dir)
        return path

    def load_source(self, source_hash: str):
        """The prepared source image (RGB PIL) with this pixel hash."""
        from PIL import Image

        path = self.source_path(source_hash)
        if not path.is_file():
            raise StoreError(f"{path}: the run folder lacks this source. Fix: rerun the sweep into this folder.")
        with Image.open(path) as image:
            return image.convert("RGB")

    def load_output(self, row) -> "Image.Image":  # noqa: F821
        """The generated image of a table row (RGB PIL)."""
        from PIL import Image

        path = self.root / (row["output_path"] if isinstance(row, dict) else row.output_path)
        with Image.open(path) as image:
            return image.convert("RGB")

    def floor_path(self, source_hash: str, seed: int, fingerprint: str | None = None) -> Path:
        """Where a source's VAE round trip for ``seed`` (made by the model ``fingerprint``) is stored."""
        model = f"-{fingerprint[:12]}" if fingerprint else ""
        return self.root / FLOOR / f"{source_hash[:20]}-{seed}{model}.png"

    def read_floor_of(self, table):
        """The floor rows of the models whose cells are in ``table`` (a run folder may compare several models)."""
        floor = self.read_floor()
        if "model_fingerprint" not in floor.columns or "model_fingerprint" not in getattr(table, "columns", []):
            return floor
        return floor[floor["model_fingerprint"].isin(set(table["model_fingerprint"]))]

    def read_floor(self):
        """The VAE round-trip table (one row per source and seed), empty if the run has none."""
        import pandas as pd

        path = self.root / FLOOR_TABLE
        return pd.read_parquet(path) if path.is_file() else pd.DataFrame()

    def write_floor(self, table) -> None:
        atomic_write(self.root / FLOOR_TABLE, lambda stream: table.to_parquet(stream, index=False))

    def write_image(self, key: str, image) -> Path:
        """Save a PIL image as ``images/<key>.png`` atomically; returns the final path."""
        path = self.image_path(key)
        atomic_write(path, lambda stream: image.save(stream, format="PNG"), temp_dir=self.temp_dir)
        return path

    # ------------------------------------------------------------------ table
    @contextmanager
    def locked(self):
        """Hold the run folder's exclusive lock (``fcntl.flock`` on ``.lock``): writers in other processes wait.

        >>> with store.locked(): ...  # doctest: +SKIP
        """
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def write_batch(self, batch_id: str, keys: list[str], *, max_batch_size: int) -> Path:
        """Record which cells the batched runner generated together (``batches/<id>.json``), once."""
        path = self.root / BATCHES / f"{batch_id}.json"
        if not path.is_file():
            atomic_write_json(path, {"batch_id": batch_id, "keys": list(keys), "max_batch_size": int(max_batch_size)})
        return path

    def read_batch(self, batch_id: str) -> dict:
        path = self.root / BATCHES / f"{batch_id}.json"
        if not path.is_file():
            raise StoreError(f"{path} is missing: the run folder is incomplete. Fix: rerun the sweep into it.")
        return json.loads(path.read_text())

    @property
    def temp_dir(self) -> Path:
        return self.root / TEMP

    def row_path(self, key: str) -> Path:
        return self.root / ROWS / f"{key}.json"

    def _read_disk_rows(self) -> dict[str, dict]:
        """results.parquet plus every row file it does not hold yet (cells finished since the last flush)."""
        rows: dict[str, dict] = {}
        path = self.root / RESULTS
        if path.is_file():
            import pandas as pd

            try:
                table = pd.read_parquet(path)
            except Exception as error:  # noqa: BLE001 - any parquet failure means the same to a user
                raise StoreError(f"{path}: unreadable ({error}). Fix: delete it and rerun the sweep.") from None
            for row in table.to_dict("records"):
                rows[row["cell_key"]] = row
        folder = self.root / ROWS
        if folder.is_dir():
            row_files = []
            for row_file in folder.glob("*.json"):
                try:
                    row_files.append((row_file.stat().st_mtime_ns, row_file.name, row_file))
                except FileNotFoundError:
                    continue
            for _, _, row_file in sorted(row_files):  # in the order cells finished
                key = row_file.stem
                if key in rows:
                    continue
                try:
                    rows[key] = json.loads(row_file.read_text())
                except (OSError, json.JSONDecodeError):
                    continue  # cannot happen with atomic writes; a foreign file is ignored
        return rows

    def _load_rows(self) -> dict[str, dict]:
        if self._rows is None:
            self._rows = self._read_disk_rows()
        return self._rows

    def has_cell(self, key: str) -> bool:
        """A cell is done when its row is in the table and its image file exists."""
        return key in self._load_rows() and self.image_path(key).is_file()

    def row(self, key: str) -> dict | None:
        return self._load_rows().get(key)

    def save_cell(self, key: str, image, row: dict) -> bool:
        """Store a finished cell: its image, then its row file, both atomically, under the folder's lock.

        The first writer wins: if another process (a concurrent sweep into the same folder) stored this cell
        first, nothing is overwritten and False is returned (its row is adopted); else True.

        >>> store.save_cell(key, image, row)  # doctest: +SKIP
        True
        """
        if row.get("cell_key") != key:
            raise StoreError("save_cell: the row's cell_key must equal the key.")
        with self.locked():
            row_path = self.row_path(key)
            if row_path.is_file() and self.image_path(key).is_file():
                self._load_rows()[key] = json.loads(row_path.read_text())
                return False
            self.write_image(key, image)
            atomic_write(row_path, lambda stream: stream.write(json.dumps(row, default=_json_value)), binary=False,
                         temp_dir=self.temp_dir)
        self._load_rows()[key] = row
        return True

    def replace_table(self, table) -> None:
        """Replace every row with those of ``table`` (a DataFrame with a cell_key column) and flush."""
        self._rows = {row["cell_key"]: row for row in table.to_dict("records")}
        self.flush(merge=False)

    def flush(self, *, merge: bool = True) -> None:
        """Rewrite results.parquet atomically under the lock: the rows on disk (other writers' included, when
        ``merge``) updated with the rows in memory."""
        import pandas as pd

        with self.locked():
            rows = self._read_disk_rows() if merge else {}
            rows.update(self._load_rows())
            table = pd.DataFrame(list(rows.values()))
            atomic_write(self.root / RESULTS, lambda stream: table.to_parquet(stream, index=False))
            self._rows = rows

    def read_table(self):
        """The results table as a pandas DataFrame (empty if no cell has finished yet)."""
        import pandas as pd

        rows = self._load_rows()
        return pd.DataFrame(list(rows.values()))


def _json_value(value):
    """JSON for numpy scalars and other values a row may hold."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
