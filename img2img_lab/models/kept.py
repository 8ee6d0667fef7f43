"""What img2img-lab keeps about a model's files between processes, under ``$IMG2IMG_LAB_CACHE_DIR`` (default
``~/.cache/img2img-lab``): ``info``'s descriptions (``model-info/``) and the fingerprints of models as loaded
(``fingerprints/``), each keyed by every file's path, size and modification time, the device and dtype it was
loaded with and the library versions. A changed, added or removed file, another device, dtype or version keys it
anew; nothing kept decides a pixel.

>>> kept_path("fingerprints", "embedded", None, "cpu", "float32") is None  # no local files: nothing is kept
True
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

#: Where kept descriptions and fingerprints go; ``~/.cache/img2img-lab`` by default.
CACHE_DIR_ENV = "IMG2IMG_LAB_CACHE_DIR"


def cache_dir() -> Path:
    """``$IMG2IMG_LAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/img2img-lab``, else ``~/.cache/img2img-lab``.

    >>> cache_dir() == Path(os.environ[CACHE_DIR_ENV])  # the tests' scratch folder
    True
    """
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "img2img-lab"


def kept_path(kind: str, label: str, folder, device, dtype) -> Path | None:
    """Where ``kind`` (``model-info``, ``fingerprints``) of this model's files, loaded on ``device`` in ``dtype``, is
    kept; ``None`` when its files are not local."""
    if folder is None:
        return None
    files = sorted((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
                   for path in Path(folder).rglob("*") if path.is_file())
    versions = {name: _version(name) for name in ("img2img-lab", "diffusers", "transformers", "torch")}
    key = {"label": label, "folder": str(Path(folder).resolve()), "files": files, "device": device or "auto",
           "dtype": dtype or "auto", "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "versions": versions}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / kind / f"{digest}.json"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
