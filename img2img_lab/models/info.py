"""``img2img-lab info``'s description of a model, kept while the model's files stay the same.

Loading any diffusers pipeline costs about 5 s of imports on a small CPU (torch, its compiler, diffusers,
transformers) before a byte of weights is read, so describing a model loads it once and keeps the description (components, parameter
counts, family, fingerprint...) in ``$IMG2IMG_LAB_CACHE_DIR/model-info`` (default ``~/.cache/img2img-lab``), keyed
by every file's path, size and modification time, the device and dtype asked for, and the library versions. A
changed, added or removed file, another device or another version describes the model anew; ``--reload`` always
does. A hub model not in the local cache yet is always loaded. Nothing here decides what a sweep records: sweeps
fingerprint the weights they load.

>>> describe_model()["pipeline_class"]  # the embedded model: loaded the first time, then read back
'StableDiffusionImg2ImgPipeline'
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from img2img_lab._utils.atomic import atomic_write

#: Where descriptions are kept (the folder ``model-info`` under it); ``~/.cache/img2img-lab`` by default.
CACHE_DIR_ENV = "IMG2IMG_LAB_CACHE_DIR"


def describe_model(model=None, *, device: str | None = None, dtype: str | None = None, reload: bool = False) -> dict:
    """:meth:`~img2img_lab.models.handle.ModelHandle.describe` of a model, read back
    when the model's files, the device and dtype asked for and the library versions are those it was made with.

    >>> describe_model(device="cpu")["family"]
    'sd'
    """
    from img2img_lab.models.loading import resolve_model

    label, folder = resolve_model(model)
    path = _description_path(label, folder, device, dtype)
    if path is not None and path.is_file() and not reload:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # unreadable: described anew below
    from img2img_lab.models.loading import load_model

    info = load_model(model, device=device, dtype=dtype).describe()
    if path is not None:
        try:
            atomic_write(path, lambda stream: stream.write(json.dumps(info, indent=1)), binary=False)
        except OSError:
            pass  # a read-only home: describing still works, it is just not kept
    return info


def cache_dir() -> Path:
    """``$IMG2IMG_LAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/img2img-lab``, else ``~/.cache/img2img-lab``.

    >>> cache_dir() == Path(os.environ[CACHE_DIR_ENV])  # the tests' scratch folder
    True
    """
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "img2img-lab"


def _description_path(label: str, folder, device, dtype) -> Path | None:
    """Where the description of this model, as asked for, is kept; ``None`` when its files are not local."""
    if folder is None:
        from img2img_lab.models.loading import cached_model_index

        index = cached_model_index(label)
        folder = index.parent if index is not None else None
    if folder is None:
        return None
    files = sorted((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
                   for path in Path(folder).rglob("*") if path.is_file())
    versions = {name: _version(name) for name in ("img2img-lab", "diffusers", "transformers", "torch")}
    key = {"label": label, "folder": str(Path(folder).resolve()), "files": files, "device": device or "auto",
           "dtype": dtype or "auto", "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "versions": versions}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "model-info" / f"{digest}.json"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
