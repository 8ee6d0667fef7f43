"""The image files of a run folder (cells, sources, masks, floors) and its configs: :class:`RunFolderFiles`, the part
of :class:`img2img_lab.store.run_store.RunStore` that knows their names (see the folder layout in :mod:`img2img_lab.store.run_store`).

Every file is written atomically into the folder's ``.tmp/``; a missing or unreadable image is a
:class:`~img2img_lab.errors.StoreError` naming the file and the fix. Every path is made from a key or hash of the
exact form the project writes and checked to stay inside the folder (:mod:`img2img_lab.store.folder_rules`): a row's
``output_path`` is never followed, only compared with the path its key gives.

>>> store.load_output(row).size
(64, 64)
>>> store.floor_path("ab" * 32, 3).relative_to(store.root).as_posix()
'floor/abababababababababab-3.png'
"""

from __future__ import annotations

from pathlib import Path

from img2img_lab._utils.atomic import atomic_write
from img2img_lab.errors import StoreError
from img2img_lab.store.folder_rules import check_cell_key, check_pixel_hash, expected_output_path, inside, is_cell_key
from img2img_lab.images.hashes import content_hash, file_pixel_hash
from img2img_lab.plan.lora_settings import adapter_file_hash

IMAGES = "images"
SOURCES = "sources"
#: Each source's subject mask (region metrics), ``<source hash>.png``, white on the subject.
MASKS = "masks"
FLOOR = "floor"
FLOOR_TABLE = "floor.parquet"
#: zlib level of generated images and floors: level 1 encodes a 512 px photo in 20 ms instead of level 6's 69 ms
#: (files ~10 % larger); rows record pixel hashes, which no level changes.
PNG_LEVEL = 1
#: Every plan swept into the folder (and a calibration's config), as a YAML config its rerun command takes.
CONFIGS = "configs"
#: A copy of each LoRA adapter file a cell ran with, ``<hash>.safetensors`` (:mod:`img2img_lab.plan.lora_settings`).
ADAPTERS = "adapters"


def repair_hint(root) -> str:
    """The fix for a damaged run folder, as the one-line errors print it.

    >>> repair_hint("runs/demo")
    'Fix: `img2img-lab verify runs/demo --repair` (regenerates or re-adopts what it can, says what it cannot).'
    """
    return f"Fix: `img2img-lab verify {root} --repair` (regenerates or re-adopts what it can, says what it cannot)."


class RunFolderFiles:
    """The run folder's image files and configs; :class:`~img2img_lab.store.run_store.RunStore` is one (``root``,
    ``images_dir`` and ``temp_dir`` are its)."""

    root: Path
    images_dir: Path
    temp_dir: Path

    def entry(self, relative: str | Path) -> Path:
        """``root / relative``, checked to stay inside the folder (an
        :class:`~img2img_lab.store.folder_rules.UnsafeEntryError` naming it if a symlink or ``..`` leads out)."""
        return inside(self.root, relative)

    def image_path(self, key: str) -> Path:
        """``images/<key>.png`` of a cell key of the project's form, inside the folder."""
        return self.entry(f"{IMAGES}/{check_cell_key(key)}.png")

    def source_path(self, source_hash: str) -> Path:
        return self.entry(f"{SOURCES}/{check_pixel_hash(source_hash, where='a source')}.png")

    def adapter_path(self, file_hash: str) -> Path:
        """``adapters/<hash>.safetensors``: the folder's copy of an adapter file (16 hex digits of its SHA-256)."""
        if not (isinstance(file_hash, str) and len(file_hash) == 16 and set(file_hash) <= set("0123456789abcdef")):
            raise StoreError(f"{file_hash!r} is not an adapter hash (16 hex digits). Fix: name adapters by the hash "
                             f"their setting records.")
        return self.entry(f"{ADAPTERS}/{file_hash}.safetensors")

    def keep_adapter(self, file_hash: str, source: Path) -> Path:
        """Copy an adapter file into the folder (once; a damaged copy is rewritten), checked against its hash."""
        path = self.adapter_path(file_hash)
        if self.intact_adapter(file_hash) is None:
            data = Path(source).read_bytes()
            if adapter_file_hash(data) != file_hash:
                raise StoreError(f"{source}: its content changed since the plan hashed it ({file_hash}). Fix: run the "
                                 f"sweep again (the plan reads the file anew).")
            self._write(path, lambda stream: stream.write(data))
        return path

    def intact_adapter(self, file_hash: str) -> Path | None:
        """The folder's copy of an adapter if it holds the bytes its hash names, else ``None``."""
        path = self.adapter_path(file_hash)
        return path if path.is_file() and adapter_file_hash(path.read_bytes()) == file_hash else None

    def _write(self, path: Path, write, *, binary: bool = True, durable: bool = True) -> Path:
        """Write ``path`` atomically through the folder's ``.tmp/``, both checked to stay inside the folder
        (``durable=False``: no fsync, for files read only through a check of their content)."""
        self.entry(path.relative_to(self.root) if path.is_relative_to(self.root) else path)
        self.entry(self.temp_dir.relative_to(self.root))
        return atomic_write(path, write, binary=binary, temp_dir=self.temp_dir, durable=durable)

    def write_source(self, source_hash: str, image) -> Path:
        """Keep the prepared source so analysis never needs the original file or the model (a damaged copy is
        rewritten)."""
        path = self.source_path(source_hash)
        if file_pixel_hash(path) != source_hash:
            self._write(path, lambda stream: image.save(stream, format="PNG"))
        return path

    def load_source(self, source_hash: str):
        """The prepared source image (RGB PIL) with this pixel hash."""
        return self._load_image(self.source_path(source_hash))

    def save_mask(self, source_hash: str, mask) -> Path:
        """Keep a source's subject mask (a boolean array) so its region metrics reproduce."""
        from PIL import Image

        image = Image.fromarray((mask.astype("uint8") * 255))
        return self._write(self.mask_path(source_hash), lambda stream: image.save(stream, format="PNG"))

    def mask_path(self, source_hash: str) -> Path:
        return self.entry(f"{MASKS}/{check_pixel_hash(source_hash, where='a mask')}.png")

    def load_mask(self, source_hash: str):
        """A source's stored subject mask as a boolean array, or ``None``."""
        import numpy as np

        path = self.mask_path(source_hash)
        return np.asarray(self._load_image(path).convert("L")) > 127 if path.is_file() else None

    def load_output(self, row) -> "Image.Image":  # noqa: F821
        """The generated image of a table row (RGB PIL); a :class:`StoreError` naming the file and the fix when it
        is missing or unreadable (an :class:`~img2img_lab.store.folder_rules.UnsafeEntryError` when the row names another
        path than its own image, or its image leads outside the folder)."""
        return self._load_image(self.output_file(row))

    def output_file(self, row) -> Path:
        """The image file of a row (a cell's ``images/<key>.png``, a floor row's ``floor/...png``), checked."""
        return self.entry(expected_output_path(row))

    def intact_output(self, row: dict):
        """The image of a row (a cell's or a floor's) if it holds the pixels the row records, else ``None``.

        >>> store.intact_output(row).size, store.intact_output({**row, "output_hash": "0" * 64})
        ((64, 64), None)
        """
        try:
            image = self.load_output(row)
        except StoreError:
            return None
        return image if content_hash(image) == row["output_hash"] else None

    def _load_image(self, path: Path):
        from PIL import Image

        path = self.entry(path.relative_to(self.root) if path.is_relative_to(self.root) else path)
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as error:
            reason = "missing" if not path.exists() else f"unreadable ({' '.join(str(error).split())})"
            raise StoreError(f"{path}: {reason}. {repair_hint(self.root)}") from None

    def floor_path(self, source_hash: str, seed: int, fingerprint: str | None = None) -> Path:
        """Where a source's VAE round trip for ``seed`` (made by the model ``fingerprint``) is stored."""
        model = f"-{fingerprint[:12]}" if fingerprint else ""
        source_hash = check_pixel_hash(source_hash, where="a floor row")
        return self.entry(f"{FLOOR}/{source_hash[:20]}-{int(seed)}{model}.png")

    def read_floor_of(self, table):
        """The floor rows of the cells in ``table``: their sources' round trips by their models (a run folder may hold
        other sources and models, whose floors are not these cells'; one round trip per source and model, with
        whichever seed made it; folders of earlier versions hold one per seed).

        >>> store.read_floor_of(table[table.seed == 1])["seed"].tolist()  # the floor of the source, made with seed 0
        [0]
        """
        import pandas as pd

        floor = self.read_floor()
        keys = [column for column in ("source_hash", "model_fingerprint")
                if column in floor.columns and column in getattr(table, "columns", [])]
        if floor.empty or not keys:
            return floor
        wanted = pd.MultiIndex.from_frame(table[keys].drop_duplicates())
        return floor[pd.MultiIndex.from_frame(floor[keys]).isin(wanted)].reset_index(drop=True)

    def read_floor(self):
        """The VAE round-trip table (a row per source and model; per seed in folders of earlier versions), empty if
        the run has none."""
        import pandas as pd

        path = self.entry(FLOOR_TABLE)
        try:
            return pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        except Exception as error:  # noqa: BLE001 - any parquet failure means the same to a user
            raise StoreError(f"{path}: unreadable ({error}). Fix: delete it and rerun the sweep.") from None

    def write_floor(self, table) -> None:
        self._write(self.root / FLOOR_TABLE, lambda stream: table.to_parquet(stream, index=False))

    def write_image(self, key: str, image) -> Path:
        """Save a PIL image as ``images/<key>.png`` atomically (:data:`PNG_LEVEL`); returns the final path."""
        return self.write_png(self.image_path(key), image)

    def write_png(self, path: Path, image) -> Path:
        """Save a generated image (a cell's, a floor's) at ``path`` atomically, fast-compressed (:data:`PNG_LEVEL`),
        without an fsync: every reader checks its pixels against the hash its row records (a power cut's torn file is
        regenerated, as a damaged one is)."""
        return self._write(path, lambda stream: image.save(stream, format="PNG", compress_level=PNG_LEVEL),
                           durable=False)

    def write_config(self, name: str, data: dict) -> Path:
        """Write ``configs/<name>.yaml`` (a config ``img2img-lab sweep`` / ``calibrate`` reads); returns its path."""
        import yaml

        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return self._write(self.entry(f"{CONFIGS}/{Path(name).name}.yaml"), lambda stream: stream.write(text),
                           binary=False)

    def image_keys(self) -> set[str]:
        """The keys of every image file in ``images/`` (names of another form are not the project's, and ignored)."""
        folder = self.entry(IMAGES)
        return {path.stem for path in folder.glob("*.png") if is_cell_key(path.stem)} if folder.is_dir() else set()
