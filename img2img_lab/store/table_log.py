"""How a run folder's table grows at a flat cost per cell: part files between consolidations (used by
:class:`img2img_lab.store.run_store.RunStore`, the only module that knows these names).

A sweep's flush does not rewrite ``results.parquet``: it appends the rows it stored since its last flush as one small
part file, ``results.parts/part-<time ns>-<pid>-<rows>.parquet``. Parts of similar size are merged (four of one
size tier into one of the next, tiers in powers of :data:`MERGE_FANOUT`), so a study of n cells holds O(log n) parts
and each row is rewritten O(log n) times, not n / chunk times. The end of a sweep consolidates everything into
``results.parquet`` and removes the parts it read. Readers take ``results.parquet``, then the parts in time order,
then row files none of them hold; a folder with no parts (every folder written before) reads as before.

Values that ``measure`` adds after a sweep are logged too (:func:`write_measurements`): results.parquet is a cache of
the row files, the parts and the measurements, so losing it loses nothing.

>>> part_name(1700000000000000000, 4242, 32)
'part-1700000000000000000-4242-32.parquet'
>>> part_rows("part-1700000000000000000-4242-32.parquet"), size_tier(32), size_tier(128)
(32, 2, 3)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PARTS = "results.parts"
#: ``measure``'s values, one file per run: ``measurements/measured-<time ns>-<pid>.parquet`` (cell_key, output_hash and
#: the columns it measured). Part of the durable log: a reader applies them to the rows of those very pixels.
MEASUREMENTS = "measurements"
#: Parts of one size tier that are merged into one part of the next tier.
MERGE_FANOUT = 4


def part_name(time_ns: int, pid: int, rows: int) -> str:
    return f"part-{time_ns}-{pid}-{rows}.parquet"


def part_rows(name: str) -> int:
    """How many rows a part holds (from its name: counting needs no read)."""
    return int(name[: -len(".parquet")].rsplit("-", 1)[1])


def size_tier(rows: int) -> int:
    """The size tier of a part: ``floor(log_fanout(rows))``."""
    tier = 0
    while rows >= MERGE_FANOUT:
        rows //= MERGE_FANOUT
        tier += 1
    return tier


def part_paths(root: Path) -> list[Path]:
    """The part files of a run folder, oldest first."""
    folder = root / PARTS
    if not folder.is_dir():
        return []
    return sorted((path for path in folder.glob("part-*.parquet")), key=lambda path: int(path.name.split("-")[1]))


def read_parts(paths: list[Path]) -> list[dict]:
    """The rows of the given parts, in order (a later part's row for a key replaces an earlier one)."""
    import pandas as pd

    from img2img_lab.errors import StoreError

    rows: list[dict] = []
    for path in paths:
        try:
            rows.extend(pd.read_parquet(path).to_dict("records"))
        except FileNotFoundError:
            continue  # merged away by another writer since it was listed
        except Exception as error:  # noqa: BLE001 - any parquet failure means the same to a user
            raise StoreError(f"{path}: unreadable ({error}). Fix: delete it; the row files in rows/ rebuild "
                             f"the table.") from None
    return rows


def write_part(root: Path, rows: list[dict], *, temp_dir: Path, time_ns: int | None = None) -> Path:
    """Append ``rows`` as a new part file (atomically; named with ``time_ns``, default now); the caller holds the
    folder's lock."""
    import pandas as pd

    from img2img_lab._utils.atomic import atomic_write

    path = root / PARTS / part_name(time.time_ns() if time_ns is None else time_ns, os.getpid(), len(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    atomic_write(path, lambda stream: table.to_parquet(stream, index=False), temp_dir=temp_dir)
    return path


def merge_tiers(root: Path, *, temp_dir: Path) -> None:
    """Merge :data:`MERGE_FANOUT` parts of one size tier into one part, until no tier holds that many (the caller
    holds the folder's lock). The merge takes the whole span of parts from the first to the last of them in time
    (smaller parts between included) and names the result with the span's newest time, so no row moves past a
    newer one of the same cell."""
    while True:
        paths = part_paths(root)
        tiers: dict[int, list[int]] = {}
        for index, path in enumerate(paths):
            tiers.setdefault(size_tier(part_rows(path.name)), []).append(index)
        full = next((indices for _, indices in sorted(tiers.items()) if len(indices) >= MERGE_FANOUT), None)
        if full is None:
            return
        span = paths[full[0]:full[-1] + 1]
        merged = {row["cell_key"]: row for row in read_parts(span)}
        newest = int(span[-1].name.split("-")[1])
        written = write_part(root, list(merged.values()), temp_dir=temp_dir, time_ns=newest)
        for path in span:
            if path != written:
                path.unlink(missing_ok=True)


def remove_parts(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def read_rows(results: Path, rows_folder: Path, read_row_file) -> dict[str, dict]:
    """Every row of a run folder: ``results.parquet``, then the parts in time order, then every row file none of them
    holds (``read_row_file(key)``: None for a damaged one), in the order cells finished. ``rows/`` is not listed when
    it has not changed since ``results.parquet`` was written."""
    import pandas as pd

    from img2img_lab.errors import StoreError

    rows: dict[str, dict] = {}
    if results.is_file():
        try:
            table = pd.read_parquet(results)
        except Exception as error:  # noqa: BLE001 - any parquet failure means the same to a user
            raise StoreError(f"{results}: unreadable ({error}). Fix: delete it; the row files in rows/ "
                             f"rebuild it.") from None
        for row in table.to_dict("records"):
            rows[row.get("cell_key")] = row
    root = results.parent
    rows.update((row.get("cell_key"), row) for row in read_parts(part_paths(root)))
    if rows_folder.is_dir() and not rows_folder_is_consolidated(root, results, rows_folder):
        _add_row_files(rows, rows_folder, read_row_file)
    apply_measurements(rows, _measurements_since(root, results))
    return rows


def _measurements_since(root: Path, results: Path) -> list[Path]:
    """The measurement logs results.parquet may not hold (all of them when it is missing)."""
    try:
        written = results.stat().st_mtime_ns
    except FileNotFoundError:
        return measurement_paths(root)
    return [path for path in measurement_paths(root) if path.stat().st_mtime_ns >= written]


def _add_row_files(rows: dict[str, dict], rows_folder: Path, read_row_file) -> None:
    row_files = []
    for row_file in rows_folder.glob("*.json"):
        try:
            row_files.append((row_file.stat().st_mtime_ns, row_file.name, row_file))
        except FileNotFoundError:
            continue
    for _, _, row_file in sorted(row_files):  # in the order cells finished
        if row_file.stem not in rows:
            row = read_row_file(row_file.stem)
            if row is not None:
                rows[row_file.stem] = row


def measured_changes(before, after):
    """The values ``after`` holds that ``before`` did not (new columns, or values that changed; NaN equals NaN): a
    table of cell_key, output_hash and the changed columns, one row per changed cell.

    >>> import pandas as pd
    >>> before = pd.DataFrame({"cell_key": ["a", "b"], "output_hash": ["x", "y"], "ssim": [0.5, float("nan")]})
    >>> after = before.assign(ssim=[0.5, 0.25], psnr=[30.0, 20.0])
    >>> measured_changes(before, after).to_dict("records")
    [{'cell_key': 'a', 'output_hash': 'x', 'ssim': 0.5, 'psnr': 30.0}, {'cell_key': 'b', 'output_hash': 'y', 'ssim': 0.25, 'psnr': 20.0}]
    """
    import pandas as pd

    identity = ["cell_key", "output_hash"]
    if after.empty:
        return pd.DataFrame(columns=identity)
    previous = before.set_index("cell_key").reindex(after["cell_key"]) if len(before) else None
    changed_columns, changed_rows = [], pd.Series(False, index=range(len(after)))
    for column in after.columns.drop(identity, errors="ignore"):
        values = after[column].reset_index(drop=True)
        if previous is None or column not in previous.columns:
            differs = values.notna()
        else:
            old = previous[column].reset_index(drop=True)
            differs = ~((values == old) | (values.isna() & old.isna())).astype(bool)
        if differs.any():
            changed_columns.append(column)
            changed_rows |= differs
    if not changed_columns:
        return pd.DataFrame(columns=identity)
    return after.reset_index(drop=True).loc[changed_rows, identity + changed_columns].reset_index(drop=True)


def write_measurements(root: Path, changes, *, temp_dir: Path, time_ns: int | None = None) -> Path | None:
    """Log measured values (:func:`measured_changes`) as one new file in ``measurements/`` (atomically); ``None``
    when there is nothing to log."""
    from img2img_lab._utils.atomic import atomic_write

    if changes is None or changes.empty:
        return None
    stamp = time.time_ns() if time_ns is None else time_ns
    path = root / MEASUREMENTS / f"measured-{stamp}-{os.getpid()}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda stream: changes.to_parquet(stream, index=False), temp_dir=temp_dir)
    return path


def measurement_paths(root: Path) -> list[Path]:
    """The measurement logs of a run folder, oldest first."""
    folder = root / MEASUREMENTS
    if not folder.is_dir():
        return []
    return sorted(folder.glob("measured-*.parquet"), key=lambda path: int(path.name.split("-")[1]))


def apply_measurements(rows: dict[str, dict], paths: list[Path]) -> None:
    """Apply measurement logs to ``rows`` in time order, each value only to the row of the pixels it measured (a cell
    regenerated since has another output hash, and keeps its own values)."""
    for record in read_parts(paths):
        row = rows.get(record.get("cell_key"))
        if row is not None and row.get("output_hash") == record.get("output_hash"):
            row.update((name, value) for name, value in record.items() if name not in ("cell_key", "output_hash"))


def rows_folder_is_consolidated(root: Path, results: Path, rows_folder: Path) -> bool:
    """Whether ``results.parquet`` was written after the last change to ``rows/`` and no part is pending: then every
    row file's row is in it and a reader need not list ``rows/`` (a rerun of a 100,000-cell study lists nothing)."""
    try:
        return (not part_paths(root)) and rows_folder.stat().st_mtime_ns < results.stat().st_mtime_ns
    except FileNotFoundError:
        return False
