"""Stable hashes of pixels, not of file bytes: the same picture saved twice (another format, other metadata or
compression) hashes the same. Cell keys, run folders and verify name images by these.

>>> len(content_hash(np.zeros((2, 2, 3), np.uint8)))
64
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from img2img_lab.images.intake import array_to_image, to_rgb


def content_hash(image: Image.Image | np.ndarray) -> str:
    """SHA-256 of an image's RGB pixels and size, as 64 hex digits.

    Independent of file format, metadata and compression: the same pixels always hash the same.

    >>> content_hash(Image.new("RGB", (2, 2))) == content_hash(np.zeros((2, 2, 3), np.uint8))
    True
    """
    if isinstance(image, Image.Image):
        array = np.asarray(to_rgb(image))
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            array = np.asarray(to_rgb(array_to_image(array, name="array")))
    digest = hashlib.sha256()
    digest.update(f"rgb8:{array.shape[1]}x{array.shape[0]}:".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def file_pixel_hash(path) -> str | None:
    """The :func:`content_hash` of an image file, or ``None`` if it is missing or does not decode (truncated,
    replaced by something that is not an image).

    >>> file_pixel_hash("/nonexistent.png") is None
    True
    """
    try:
        with Image.open(path) as image:
            return content_hash(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError):
        return None
