"""``img2img-lab info``'s description of a model, kept while the model's files stay the same.

Loading any diffusers pipeline costs about 5 s of imports on a small CPU (torch, its compiler, diffusers,
transformers) before a byte of weights is read, so describing a model loads it once and keeps the description (components, parameter
counts, family, fingerprint...) in ``$IMG2IMG_LAB_CACHE_DIR/model-info`` (default ``~/.cache/img2img-lab``,
:mod:`img2img_lab.models.kept`), keyed by every file's path, size and modification time, the device and dtype asked
for, and the library versions. A
changed, added or removed file, another device or another version describes the model anew; ``--reload`` always
does. A hub model not in the local cache yet is always loaded. Nothing here decides what a sweep records: sweeps
fingerprint the weights they load.

>>> describe_model()["pipeline_class"]  # the embedded model: loaded the first time, then read back
'StableDiffusionImg2ImgPipeline'
"""

from __future__ import annotations

import json

from img2img_lab._utils.atomic import atomic_write
from img2img_lab.models.kept import kept_path


def describe_model(model=None, *, device: str | None = None, dtype: str | None = None, reload: bool = False) -> dict:
    """:meth:`~img2img_lab.models.handle.ModelHandle.describe` of a model, read back
    when the model's files, the device and dtype asked for and the library versions are those it was made with.

    >>> describe_model(device="cpu")["family"]
    'sd'
    """
    from img2img_lab.models.loading import cached_model_index, resolve_model

    label, folder = resolve_model(model)
    if folder is None:  # a hub model: its snapshot in the Hugging Face cache, if it is there
        index = cached_model_index(label)
        folder = index.parent if index is not None else None
    path = kept_path("model-info", label, folder, device, dtype)
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
