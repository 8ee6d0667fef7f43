"""What a run folder may hold, and the rule every reader and writer applies: stay inside it.

A run folder is shared (a lab's disk, a colleague's study, a served report), so its contents are input, not
instructions. Everything img2img-lab reads, writes or deletes in one obeys three rules:

* **names have the exact form the project writes**: a cell key is 20 lower-case hex digits, a pixel hash 64, an
  image path is ``images/<key>.png`` of its own row (a floor's ``floor/<hash20>-<seed>[-<fingerprint12>].png``);
  a key or path of any other form (``../../victim/settings``, an absolute ``output_path``) is refused;
* **nothing leaves the folder**: a path is resolved, symlinks followed, and must lie inside the resolved folder, so
  ``images/`` linked to a folder of photos, or ``images/<key>.png`` linked to a private picture, is refused;
* a refused entry is a :class:`UnsafeEntryError` (one line naming the entry and the fix): ``verify`` reports it
  (exit 1) and no command reads, writes, deletes or embeds it.

>>> is_cell_key("0123456789abcdef0123"), is_cell_key("../../victim/settings")
(True, False)
>>> expected_output_path({"cell_key": "0123456789abcdef0123"})
'images/0123456789abcdef0123.png'
>>> inside("runs/demo", "images/../../elsewhere.png")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
img2img_lab.store.folder_rules.UnsafeEntryError: images/../../elsewhere.png: leads outside the run folder ...
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from img2img_lab.errors import StoreError

__all__ = ["UnsafeEntryError", "is_cell_key", "is_pixel_hash", "check_cell_key", "check_pixel_hash", "inside",
           "expected_output_path", "escaping_entries", "FOLDERS"]

#: A cell key (:func:`img2img_lab.plan.schema.cell_key`): the first 20 hex digits of a SHA-256.
CELL_KEY = re.compile(r"[0-9a-f]{20}")
#: A pixel hash (:func:`img2img_lab.images.content_hash`): a whole SHA-256 in hex.
PIXEL_HASH = re.compile(r"[0-9a-f]{64}")
#: A floor image's name: the source hash's first 20 digits, the seed, and the model fingerprint's first 12.
FLOOR_FILE = re.compile(r"floor/[0-9a-f]{20}-\d{1,20}(?:-[0-9a-f]{12})?\.png")
#: The folders of a run folder (each may hold nothing that leads outside it).
FOLDERS = ("images", "rows", "sources", "masks", "configs", "calibration", "floor", "batches", "results.parts",
           "measurements", "uploads", "adapters", ".tmp")
FIX = "Fix: remove that entry (or ask whoever prepared the folder); img2img-lab reads and writes only inside it."


class UnsafeEntryError(StoreError):
    """A run folder's entry names or leads to something outside the folder (or is not of a form the project
    writes); it is never read, written, deleted or embedded."""


def is_cell_key(value) -> bool:
    """Whether ``value`` is a cell key of the exact form the project writes (20 lower-case hex digits)."""
    return isinstance(value, str) and CELL_KEY.fullmatch(value) is not None


def is_pixel_hash(value) -> bool:
    """Whether ``value`` is a pixel hash of the exact form the project writes (64 lower-case hex digits).

    >>> is_pixel_hash("ab" * 32), is_pixel_hash("/etc/passwd")
    (True, False)
    """
    return isinstance(value, str) and PIXEL_HASH.fullmatch(value) is not None


def check_cell_key(key, *, where: str = "a row") -> str:
    """``key`` if it is a cell key, else an :class:`UnsafeEntryError` naming it.

    >>> check_cell_key("x/../y")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    img2img_lab.store.folder_rules.UnsafeEntryError: a row: cell_key 'x/../y' is not a key img2img-lab writes ...
    """
    if not is_cell_key(key):
        raise UnsafeEntryError(f"{where}: cell_key {_shown(key)} is not a key img2img-lab writes (20 lower-case hex "
                               f"digits), so it is never used as a file name. {FIX}")
    return key


def check_pixel_hash(value, *, where: str = "a row") -> str:
    """``value`` if it is a pixel hash, else an :class:`UnsafeEntryError` naming it."""
    if not is_pixel_hash(value):
        raise UnsafeEntryError(f"{where}: hash {_shown(value)} is not a pixel hash img2img-lab writes (64 lower-case "
                               f"hex digits), so it is never used as a file name. {FIX}")
    return value


def expected_output_path(row) -> str:
    """The one image path a row may name: ``images/<key>.png`` for a cell's row, or a floor row's own
    ``floor/...png``; an :class:`UnsafeEntryError` for any other (an absolute path, ``..``, another cell's image)."""
    get = row.get if isinstance(row, dict) else lambda name, default=None: getattr(row, name, default)
    key, recorded = get("cell_key"), get("output_path")
    if key is None or key != key:  # a floor row (no cell key)
        if isinstance(recorded, str) and FLOOR_FILE.fullmatch(recorded):
            return recorded
        raise UnsafeEntryError(f"a floor row: output_path {_shown(recorded)} is not a floor image img2img-lab "
                               f"writes (floor/<hash>-<seed>.png). {FIX}")
    expected = f"images/{check_cell_key(key)}.png"
    if recorded is not None and recorded == recorded and recorded != expected:
        raise UnsafeEntryError(f"row {key}: output_path {_shown(recorded)} is not its image {expected} (a row's "
                               f"image is always images/<its key>.png inside the folder). {FIX}")
    return expected


def inside(root, path) -> Path:
    """``root / path`` after checking that it stays inside ``root`` once every symlink on the way is followed;
    else an :class:`UnsafeEntryError` naming the entry. The path itself is returned (not the resolved one)."""
    root = Path(root)
    target = path if Path(path).is_absolute() else root / path
    target = Path(target)
    try:
        real_root = root.resolve()
        real = target.resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise UnsafeEntryError(f"{_relative(root, target)}: cannot be resolved ({error}). {FIX}") from None
    if real != real_root and not real.is_relative_to(real_root):
        link = _first_link(root, target)
        how = f" ({_relative(root, link)} is a symlink to {os.readlink(link)})" if link is not None else ""
        raise UnsafeEntryError(f"{_relative(root, target)}: leads outside the run folder {root}{how}. {FIX}")
    return target


def escaping_entries(root) -> list[str]:
    """Every entry of the run folder that leads outside it: its top-level entries and the entries of its
    :data:`FOLDERS` (one listing each, no file read). Each is described in one line.

    >>> escaping_entries("runs/demo")
    []
    """
    root = Path(root)
    found = []
    for entry in _entries(root):
        try:
            inside(root, entry)
        except UnsafeEntryError as error:
            found.append(str(error).split(". Fix:")[0])
    return found


def _entries(root: Path):
    try:
        top = sorted(root.iterdir())
    except OSError:
        return
    for entry in top:
        yield entry
        if entry.name in FOLDERS and entry.is_dir() and not entry.is_symlink():
            try:
                yield from sorted(entry.iterdir())
            except OSError:
                continue


def _first_link(root: Path, target: Path) -> Path | None:
    current = root
    for part in target.relative_to(root).parts if target.is_relative_to(root) else ():
        current = current / part
        if current.is_symlink():
            return current
    return None


def _relative(root: Path, target: Path) -> str:
    try:
        return target.relative_to(root).as_posix()
    except ValueError:
        return str(target)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 240 else text[:237] + "..."
