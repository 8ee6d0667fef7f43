"""Images as the arrays every metric takes: RGB uint8 ``HxWx3``, a source and an output of one size.

>>> metric_pair(np.zeros((2, 2, 3), np.uint8), Image.new("RGB", (2, 2)))[1].shape
(2, 2, 3)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from img2img_lab.errors import Img2ImgLabError


def metric_array(image) -> np.ndarray:
    """RGB uint8 HxWx3 array from a PIL image or an array (what every metric takes).

    >>> metric_array(Image.new("RGB", (4, 2))).shape
    (2, 4, 3)
    """
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise Img2ImgLabError(
            f"metrics take RGB uint8 images of shape HxWx3; got {array.dtype} {array.shape}. "
            f"Fix: pass PIL images or uint8 arrays (img2img_lab.images.load_image gives both)."
        )
    return array


def metric_pair(source, output) -> tuple[np.ndarray, np.ndarray]:
    """Two images as metric arrays of one shape (a clear error when their sizes differ)."""
    a, b = metric_array(source), metric_array(output)
    if a.shape != b.shape:
        raise Img2ImgLabError(
            f"source {a.shape[1]}x{a.shape[0]} and output {b.shape[1]}x{b.shape[0]} differ in size. "
            f"Fix: compare the output with the *prepared* source (the run folder's sources/ copy)."
        )
    return a, b
